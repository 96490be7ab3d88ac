//! Checks on TorchScript archives before libtorch loads them: no operator
//! that reaches outside the model.
//!
//! A TorchScript archive (`torch.jit.save`) is a zip of Python-like source
//! (`code/**/*.py`), which libtorch compiles at load time, and pickled
//! tensors. The source can call any operator libtorch registers, and a few
//! of those touch the world outside the process's memory:
//! `torch.from_file` reads any file the server can read into a tensor (the
//! admin key, every tenant's databases), `aten::save` writes one, and the
//! RPC and collective operators talk to other processes. A model that names
//! one of them is refused, whatever it calls them through
//! (`torch.from_file`, `torch.ops.aten.from_file`, or a string given to
//! `getattr`).
//!
//! The check reads every `.py` entry of the archive, decompressed, and
//! looks at every identifier in it and every word inside its string
//! literals (escapes decoded, adjacent literals joined, as the TorchScript
//! lexer does), so that a name cannot be spelled around it. It errs on the
//! side of refusing: a model that merely mentions such a name in a string
//! is refused too. Archives libtorch would read differently from this check
//! (two entries of one name) are refused as well.

use std::io::Read as _;

use super::NnError;

/// Operators (and operator namespaces) a model may not name.
const FORBIDDEN: &[&str] = &[
    // Files.
    "from_file",
    "save",
    "load_tensor",
    "debugprims",
    // Other processes.
    "rpc_async",
    "rpc_sync",
    "rpc_remote",
    "remote",
    "c10d",
    "_c10d_functional",
    "_c10d_functional_autograd",
    "symm_mem",
    "distributed",
];

/// Most bytes of source read from one archive.
const MAX_SOURCE_BYTES: u64 = 64 * 1024 * 1024;

/// Refuses a TorchScript archive whose source names an operator that
/// reaches outside the model, or that this check cannot read.
pub fn check_archive(bytes: &[u8]) -> Result<(), NnError> {
    let invalid =
        |why: String| NnError::InvalidEncoding(format!("not a loadable TorchScript model: {why}"));
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| invalid(format!("not a zip archive ({e})")))?;
    let mut names = std::collections::HashSet::new();
    let mut budget = MAX_SOURCE_BYTES;
    for ix in 0..archive.len() {
        let mut entry = archive
            .by_index(ix)
            .map_err(|e| invalid(format!("an unreadable entry ({e})")))?;
        let name = entry.name().to_string();
        if !names.insert(name.clone()) {
            return Err(invalid("two entries with one name".into()));
        }
        if !name.ends_with(".py") {
            continue;
        }
        let mut source = Vec::new();
        let read = (&mut entry)
            .take(budget.saturating_add(1))
            .read_to_end(&mut source)
            .map_err(|e| invalid(format!("an unreadable entry ({e})")))?;
        budget = budget
            .checked_sub(read as u64)
            .ok_or_else(|| invalid("more source than the model limit allows".into()))?;
        if let Some(word) = forbidden_word(&String::from_utf8_lossy(&source)) {
            return Err(NnError::InvalidEncoding(format!(
                "the model's code names `{word}`, an operator that reaches outside the model \
                 (files, other processes); such models are not accepted"
            )));
        }
    }
    Ok(())
}

/// The first forbidden word among `source`'s identifiers and the words of
/// its string literals. Each literal is looked at both with its escapes
/// decoded and as written (so whether it is a raw string does not matter),
/// and joined with the literals next to it.
fn forbidden_word(source: &str) -> Option<&'static str> {
    let check = |text: &str| {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find_map(|word| FORBIDDEN.iter().find(|f| **f == word).copied())
    };
    let mut code = String::new();
    let (mut decoded, mut verbatim) = (String::new(), String::new());
    // Whether the literal being read joins the one before it.
    let mut joining = false;
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                if !joining {
                    decoded.clear();
                    verbatim.clear();
                }
                read_literal(c, &mut chars, &mut decoded, &mut verbatim);
                joining = true;
                if let Some(word) = check(&decoded).or_else(|| check(&verbatim)) {
                    return Some(word);
                }
                // A literal ends a word of code: `b"..."` is no `b`.
                code.push(' ');
            }
            '#' => {
                // A comment: nothing in it runs.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                code.push('\n');
            }
            c if c.is_whitespace() || c == '\\' => code.push(c),
            c => {
                joining = false;
                code.push(c);
            }
        }
    }
    check(&code)
}

/// Reads a string literal opened by `quote` (already consumed), appending
/// its text with escapes decoded to `decoded` and as written to `verbatim`;
/// handles triple quotes.
fn read_literal(quote: char, chars: &mut Chars<'_>, decoded: &mut String, verbatim: &mut String) {
    let triple = {
        let mut ahead = chars.clone();
        ahead.next() == Some(quote) && ahead.next() == Some(quote)
    };
    if triple {
        chars.next();
        chars.next();
    } else if chars.peek() == Some(&quote) {
        // The empty literal.
        chars.next();
        return;
    }
    while let Some(c) = chars.next() {
        if c == quote {
            if !triple {
                return;
            }
            let mut ahead = chars.clone();
            if ahead.next() == Some(quote) && ahead.next() == Some(quote) {
                chars.next();
                chars.next();
                return;
            }
        }
        verbatim.push(c);
        if c != '\\' {
            decoded.push(c);
            continue;
        }
        let Some(escaped) = chars.next() else {
            return;
        };
        verbatim.push(escaped);
        let char = match escaped {
            'x' => digits(chars, String::new(), 2, 16, verbatim),
            'u' => digits(chars, String::new(), 4, 16, verbatim),
            'U' => digits(chars, String::new(), 8, 16, verbatim),
            '0'..='7' => digits(chars, String::from(escaped), 2, 8, verbatim),
            'n' => Some('\n'),
            't' => Some('\t'),
            '\n' => None,
            other => Some(other),
        };
        decoded.extend(char);
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// The character of an escape's digits: `first` and up to `len` more
/// digits of `radix` read from `chars` (and appended to `verbatim`).
fn digits(
    chars: &mut Chars<'_>,
    mut first: String,
    len: usize,
    radix: u32,
    verbatim: &mut String,
) -> Option<char> {
    let more: String = (0..len)
        .map_while(|_| chars.next_if(|c| c.is_digit(radix)))
        .collect();
    verbatim.push_str(&more);
    first.push_str(&more);
    u32::from_str_radix(&first, radix)
        .ok()
        .and_then(char::from_u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn archive(files: &[(&str, &str)], method: zip::CompressionMethod) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::FileOptions::default().compression_method(method);
        for (name, text) in files {
            zip.start_file(*name, options).expect("entry");
            zip.write_all(text.as_bytes()).expect("write");
        }
        zip.finish().expect("finish");
        drop(zip);
        out.into_inner()
    }

    const CLEAN: &str = "class M(Module):\n  def forward(self: __torch__.M, x: Tensor) -> Tensor:\n    return torch.add(x, 1)\n";

    fn refused(source: &str) -> String {
        let bytes = archive(
            &[("m/data.pkl", "pickle"), ("m/code/__torch__.py", source)],
            zip::CompressionMethod::Deflated,
        );
        match check_archive(&bytes) {
            Err(NnError::InvalidEncoding(m)) => m,
            other => panic!("{source:?}: {other:?}"),
        }
    }

    #[test]
    fn models_that_name_no_forbidden_operator_pass() {
        for method in [
            zip::CompressionMethod::Stored,
            zip::CompressionMethod::Deflated,
        ] {
            let bytes = archive(&[("m/code/__torch__.py", CLEAN)], method);
            check_archive(&bytes).expect("clean");
        }
        // Words that contain a forbidden one are other words.
        check_archive(&archive(
            &[(
                "m/code/__torch__.py",
                "saved = torch.add(x, 1)\nfrom_files = 'saves'\n",
            )],
            zip::CompressionMethod::Deflated,
        ))
        .expect("other words");
    }

    #[test]
    fn forbidden_operators_are_refused_however_they_are_spelled() {
        for source in [
            "t = torch.from_file(\"glia-data/admin.key\", False, 16, dtype=0)",
            "ops.aten.save(x, \"/tmp/out\")",
            "torch.ops.aten.from_file(\"x\")",
            "f = getattr(torch.ops.aten, \"from_\\x66ile\")",
            "f = getattr(torch.ops.aten, 'from_' 'file')",
            "f = getattr(torch.ops.aten, \"from_\" \\\n \"file\")",
            "f = getattr(torch.ops.aten, \"\"\"from_file\"\"\")",
            "f = getattr(torch.ops.aten, \"from\\137file\")",
            "f = getattr(torch.ops.aten, \"from\\u005ffile\")",
            "f = getattr(torch.ops.aten, r\"from_file\")",
            "x = torch.ops.prim.rpc_sync(\"w\", f, ())",
            "x = torch.ops._c10d_functional.all_reduce(x, \"sum\", \"0\")",
        ] {
            let message = refused(source);
            assert!(
                message.contains("reaches outside the model"),
                "{source}: {message}"
            );
        }
        // A string does not join a name across code.
        check_archive(&archive(
            &[(
                "m/code/__torch__.py",
                "a = 'from_' + b + 'file'\n# torch.save in a comment\n",
            )],
            zip::CompressionMethod::Deflated,
        ))
        .expect("no forbidden word");
    }

    #[test]
    fn archives_the_check_cannot_read_alike_are_refused() {
        let dup = archive(
            &[
                ("m/code/__torch__.py", CLEAN),
                ("m/code/__torch__.py", CLEAN),
            ],
            zip::CompressionMethod::Stored,
        );
        assert!(
            matches!(check_archive(&dup), Err(NnError::InvalidEncoding(m)) if m.contains("two entries"))
        );
        for junk in [
            &b"not a zip"[..],
            &[],
            &archive(&[("m/code/a.py", CLEAN)], zip::CompressionMethod::Stored)[..40],
        ] {
            assert!(matches!(
                check_archive(junk),
                Err(NnError::InvalidEncoding(_))
            ));
        }
    }
}
