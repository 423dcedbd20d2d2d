//! `weft-cni`: the CNI plugin. Not implemented yet; it answers every command
//! with the CNI error "not implemented" so that a runtime never mistakes it
//! for a working plugin.

fn main() {
    let msg = r#"{"cniVersion":"1.0.0","code":7,"msg":"weft-cni is not implemented yet"}"#;
    #[allow(clippy::print_stdout)]
    {
        println!("{msg}");
    }
    std::process::exit(1);
}
