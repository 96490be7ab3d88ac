//! Turns `vocab.txt` (one WordPiece token per line, the line number is its id)
//! into static tables the tokenizer binary-searches, so an invocation, which
//! always starts in a fresh instance, never builds a map of the vocabulary.
//!
//! Writes to `OUT_DIR`:
//! - `vocab_words.txt`: every token, sorted bytewise, concatenated;
//! - `vocab.rs`: `ENDS` (where each sorted token ends in the words) and `IDS`
//!   (its id), both in sorted order.

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() -> Result<(), String> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let path = manifest.join("vocab.txt");
    println!("cargo:rerun-if-changed={}", path.display());

    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut entries = text
        .lines()
        .enumerate()
        .map(|(id, token)| {
            if token.is_empty() {
                return Err(format!("vocab.txt line {}: empty token", id + 1));
            }
            let id = u16::try_from(id).map_err(|_| "vocab.txt: more than 65536 tokens")?;
            Ok((token, id))
        })
        .collect::<Result<Vec<(&str, u16)>, String>>()?;
    entries.sort_unstable();
    for pair in entries.windows(2) {
        if let [(a, _), (b, _)] = pair
            && a == b
        {
            return Err(format!("vocab.txt: token {a:?} appears twice"));
        }
    }

    let mut words = String::with_capacity(text.len());
    let mut ends = String::new();
    let mut ids = String::new();
    for (token, id) in &entries {
        words.push_str(token);
        let end = u32::try_from(words.len()).map_err(|_| "vocab.txt: over 4 GiB")?;
        write!(ends, "{end},").map_err(|e| e.to_string())?;
        write!(ids, "{id},").map_err(|e| e.to_string())?;
    }
    let n = entries.len();
    let code = format!(
        "/// Every token, sorted bytewise, concatenated.\n\
         static WORDS: &str = include_str!(concat!(env!(\"OUT_DIR\"), \"/vocab_words.txt\"));\n\
         /// Where each sorted token ends in `WORDS` (it starts where the previous one ends).\n\
         static ENDS: [u32; {n}] = [{ends}];\n\
         /// The id of each sorted token.\n\
         static IDS: [u16; {n}] = [{ids}];\n"
    );
    std::fs::write(out.join("vocab_words.txt"), words)
        .map_err(|e| format!("writing vocab_words.txt: {e}"))?;
    std::fs::write(out.join("vocab.rs"), code).map_err(|e| format!("writing vocab.rs: {e}"))?;
    Ok(())
}
