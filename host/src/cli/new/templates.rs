//! The function templates `glia new` writes (`host/templates/`), and how
//! their placeholders are filled.
//!
//! Standard library only: the test suite's build script includes this file
//! to generate and build every template exactly as `glia new` writes it.

/// A template: the files of a function crate.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// What `--template` names it.
    pub name: &'static str,
    /// One line for `glia new --help` and the summary.
    pub about: &'static str,
    /// Models the function loads, to grant it on deploy (`--models`).
    pub models: &'static [&'static str],
    /// `(path, contents)`, with `{{name}}`, `{{crate}}` and `{{sdk}}`
    /// placeholders.
    pub files: &'static [(&'static str, &'static str)],
}

/// Files every template has.
macro_rules! template_files {
    ($dir:literal) => {
        &[
            (
                "Cargo.toml",
                include_str!(concat!("../../../templates/", $dir, "/Cargo.toml.tmpl")),
            ),
            (
                "Cargo.lock",
                include_str!(concat!("../../../templates/", $dir, "/Cargo.lock.tmpl")),
            ),
            (
                "README.md",
                include_str!(concat!("../../../templates/", $dir, "/README.md")),
            ),
            (
                "src/lib.rs",
                include_str!(concat!("../../../templates/", $dir, "/src/lib.rs")),
            ),
            (".gitignore", "/target\n"),
        ]
    };
}

/// Every template, the default first.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "http",
        about: "a plain HTTP function: JSON in, JSON out",
        models: &[],
        files: template_files!("http"),
    },
    Template {
        name: "classify",
        about: "an image classifier on the `digits` model, with softmax and top-k",
        models: &["digits"],
        files: template_files!("classify"),
    },
    Template {
        name: "embed",
        about: "sentence embeddings with the `minilm` model and the SDK's tokenizer",
        models: &["minilm"],
        files: template_files!("embed"),
    },
];

/// The template named `name`.
pub fn find(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

/// Whether `name` can name both a glia function and a Rust crate: a
/// lowercase letter, then lowercase letters, digits and `-`, 63 at most.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 63
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` cannot name a function: use a lowercase letter, then lowercase letters, \
             digits and `-` (at most 63, not ending in `-`)"
        ))
    }
}

/// The template's files for a function `name` using the SDK at `sdk`.
pub fn render(template: &Template, name: &str, sdk: &str) -> Vec<(&'static str, String)> {
    let krate = name.replace('-', "_");
    // The SDK path goes into a TOML basic string.
    let sdk = sdk.replace('\\', "\\\\").replace('"', "\\\"");
    template
        .files
        .iter()
        .map(|(path, contents)| {
            let text = contents
                .replace("{{name}}", name)
                .replace("{{crate}}", &krate)
                .replace("{{sdk}}", &sdk);
            let text = if *path == "Cargo.lock" {
                sort_root_package(&text, name)
            } else {
                text
            };
            (*path, text)
        })
        .collect()
}

/// Moves the package `name` to its place in the lock file's order (by name),
/// where cargo writes it, so that `cargo build --locked` accepts the file.
fn sort_root_package(lock: &str, name: &str) -> String {
    let mut blocks: Vec<&str> = lock.trim_end().split("\n\n").collect();
    let block_name = |block: &str| -> Option<String> {
        let line = block.lines().find(|l| l.starts_with("name = "))?;
        Some(
            line.trim_start_matches("name = ")
                .trim_matches('"')
                .to_string(),
        )
    };
    let is_package = |block: &str| block.starts_with("[[package]]");
    let Some(root) = blocks
        .iter()
        .position(|b| is_package(b) && block_name(b).as_deref() == Some(name))
    else {
        return lock.to_string();
    };
    let root_block = blocks.remove(root);
    let at = blocks
        .iter()
        .position(|b| is_package(b) && block_name(b).is_some_and(|n| n.as_str() > name))
        .unwrap_or(blocks.len());
    blocks.insert(at, root_block);
    let mut sorted = blocks.join("\n\n");
    sorted.push('\n');
    sorted
}
