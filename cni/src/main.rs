//! The `weft-cni` binary: reads stdin and the environment, prints what
//! [`weft_cni::answer`] says and exits with its code. Everything else is in
//! the library (so the fuzz targets reach the decoders).

use std::io::{Read, Write};
use weft_cni::error::CniError;

fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(weft_cni::MAX_STDIN)
        .read_to_end(&mut stdin);
    let (text, code) = match read {
        Ok(_) => weft_cni::answer(&stdin, |k| std::env::var(k).ok()),
        Err(e) => {
            weft_cni::render_outcome(&stdin, Err(CniError::Io(format!("cannot read stdin: {e}"))))
        }
    };
    let mut out = std::io::stdout().lock();
    if !text.is_empty() {
        let _ = writeln!(out, "{text}");
    }
    let _ = out.flush();
    std::process::exit(code);
}
