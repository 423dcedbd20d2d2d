//! The `weft` command line.

fn main() {
    eprintln!("weft: not built yet");
    std::process::exit(2);
}
