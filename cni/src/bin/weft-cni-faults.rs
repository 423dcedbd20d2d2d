//! `weft-cni` with fault injection (`WEFT_CNI_FAULT`), built only with the
//! `fault-injection` feature for tests/cni.rs: the same plugin otherwise.

fn main() {
    weft_cni::main()
}
