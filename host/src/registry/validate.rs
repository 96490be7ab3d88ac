//! Upload validation that needs no compiler: names, the wasm header, and the
//! component's imports against what the platform offers.
//!
//! These checks run before compilation so a wrong upload is refused in
//! microseconds with a reason the author can act on. Compilation
//! (`runtime::Runtime::precompile`) and linking then catch the rest.

use wasmparser::{Encoding, Parser, Payload};

/// Longest function or model name.
pub const MAX_NAME_LEN: usize = 63;

/// WASI 0.2 packages the platform links. Any `0.2.x` version up to the one the
/// host implements is accepted (wasmtime links minor versions compatibly).
const PROVIDED_PACKAGES: &[&str] = &[
    "wasi:cli",
    "wasi:clocks",
    "wasi:filesystem",
    "wasi:io",
    "wasi:random",
    "wasi:sockets",
    "wasi:http",
];
/// The newest WASI 0.2 patch release the host implements.
const PROVIDED_WASI_PATCH: u64 = 12;
/// The `wasi:nn` version the host implements (a release candidate: exact).
const PROVIDED_NN: &str = "wasi:nn@0.2.0-rc-2024-10-28";

/// Why an upload was refused before compilation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error(
        "invalid name `{0}`: names are 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("not WebAssembly: the body does not start with the `\\0asm` magic bytes")]
    NotWasm,
    #[error("core module: build a component, e.g. for wasm32-wasip2")]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("the component imports what the platform does not provide: {}", .0.join(", "))]
    UnsatisfiedImports(Vec<String>),
    #[error(
        "the component does not export `wasi:http/incoming-handler@0.2.x`: build it for the wasi:http proxy world ({0})"
    )]
    MissingHandler(String),
}

/// Checks a function or model name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn check_name(name: &str) -> Result<(), UploadError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if first_ok && rest_ok && name.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        Err(UploadError::InvalidName(name.chars().take(80).collect()))
    }
}

/// Checks that `bytes` is a component whose top-level imports the platform
/// can satisfy. Returns the import names.
pub fn check_component(bytes: &[u8]) -> Result<Vec<String>, UploadError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(UploadError::NotWasm);
    }
    let mut depth = 0usize;
    let mut imports = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| UploadError::Invalid(e.to_string()))?;
        match payload {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } if depth == 0 => return Err(UploadError::CoreModule),
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| UploadError::Invalid(e.to_string()))?;
                    imports.push(import.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    let missing: Vec<String> = imports
        .iter()
        .filter(|name| !is_provided(name))
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(imports)
    } else {
        Err(UploadError::UnsatisfiedImports(missing))
    }
}

/// Whether an import name like `wasi:http/types@0.2.3` names a provided
/// interface.
fn is_provided(import: &str) -> bool {
    let Some((path, version)) = import.split_once('@') else {
        return false;
    };
    let Some((package, _interface)) = path.split_once('/') else {
        return false;
    };
    if package == "wasi:nn" {
        return format!("{package}@{version}") == PROVIDED_NN;
    }
    if !PROVIDED_PACKAGES.contains(&package) {
        return false;
    }
    let mut parts = version.split('.');
    let (Some("0"), Some("2"), Some(patch), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    patch.parse::<u64>().is_ok_and(|p| p <= PROVIDED_WASI_PATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["hello", "a", "0", "img-classify-2", &"a".repeat(63)] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "Hello", "a_b", "a.b", "a/b", "ü", &"a".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_checks() {
        assert_eq!(check_component(b"hello"), Err(UploadError::NotWasm));
        assert_eq!(check_component(b""), Err(UploadError::NotWasm));
        assert_eq!(
            check_component(b"\0asm\x01\0\0\0"),
            Err(UploadError::CoreModule)
        );
        assert!(matches!(
            check_component(b"\0asm\x0d\0\x01\0\xff"),
            Err(UploadError::Invalid(_))
        ));
    }

    #[test]
    fn imports_against_the_platform() {
        assert!(is_provided("wasi:http/types@0.2.0"));
        assert!(is_provided("wasi:cli/environment@0.2.12"));
        assert!(!is_provided("wasi:http/types@0.3.0"));
        assert!(!is_provided("wasi:http/types@0.2.99"));
        assert!(is_provided("wasi:nn/graph@0.2.0-rc-2024-10-28"));
        assert!(!is_provided("wasi:nn/graph@0.2.0-rc-2023-01-01"));
        assert!(!is_provided("acme:db/query@1.0.0"));
        assert!(!is_provided("env"));
    }
}
