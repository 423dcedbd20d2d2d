//! The `weft-cni` binary: everything is in the library (so the fuzz
//! targets reach the decoders, and the test-only `weft-cni-faults` build
//! is the same program).

fn main() {
    weft_cni::main()
}
