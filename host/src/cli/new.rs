//! `glia new`: scaffolds a function crate from a template, ready for
//! `cargo build --target wasm32-wasip2 --release` and `glia deploy`.

mod templates;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use templates::{TEMPLATES, Template};

/// The SDK of the checkout this binary was built from.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Function name (also the crate's): lowercase letters, digits and `-`.
    name: String,
    /// `http` (plain HTTP), `classify` (the `digits` model) or `embed` (the
    /// `minilm` model and the tokenizer).
    #[arg(long, short, default_value = "http", value_parser = template_name)]
    template: String,
    /// Directory to create; defaults to `./NAME`.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `sdk/` directory of a glia checkout (the SDK is a path
    /// dependency); defaults to the one this binary was built from.
    #[arg(long, env = "GLIA_SDK")]
    sdk: Option<PathBuf>,
}

fn template_name(name: &str) -> Result<String, String> {
    match templates::find(name) {
        Some(template) => Ok(template.name.to_string()),
        None => Err(format!(
            "no template `{name}`; choose one of: {}",
            TEMPLATES
                .iter()
                .map(|t| format!("{} ({})", t.name, t.about))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Writes the crate and says what to run next.
pub fn new(args: NewArgs) -> anyhow::Result<()> {
    templates::check_name(&args.name).map_err(anyhow::Error::msg)?;
    let template = templates::find(&args.template)
        .with_context(|| format!("no template `{}`", args.template))?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let sdk = sdk_dir(args.sdk)?;
    if dir.exists() && dir.read_dir().map_or(true, |mut d| d.next().is_some()) {
        bail!("{} already exists and is not empty", dir.display());
    }
    for (path, contents) in templates::render(template, &args.name, &sdk.display().to_string()) {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", next_steps(template, &args.name, &dir));
    Ok(())
}

/// The SDK directory, absolute, checked to hold the SDK.
fn sdk_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = given.unwrap_or_else(|| PathBuf::from(BUILT_FROM_SDK));
    let manifest = dir.join("Cargo.toml");
    let is_sdk =
        std::fs::read_to_string(&manifest).is_ok_and(|text| text.contains("name = \"glia-sdk\""));
    if !is_sdk {
        bail!(
            "{} is not the glia SDK; pass --sdk with the sdk/ directory of a glia checkout",
            dir.display()
        );
    }
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

/// The three commands from a new crate to a called function.
fn next_steps(template: &Template, name: &str, dir: &Path) -> String {
    let krate = name.replace('-', "_");
    let manifest = dir.join("Cargo.toml");
    let wasm = dir
        .join("target/wasm32-wasip2/release")
        .join(format!("{krate}.wasm"));
    let models = if template.models.is_empty() {
        String::new()
    } else {
        format!(" --models {}", template.models.join(","))
    };
    let call = match template.name {
        "classify" => format!(
            "glia invoke {name} / -d '{{\"pixels\":[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]}}'"
        ),
        "embed" => format!("glia invoke {name} / -d '{{\"text\":\"A man is playing a guitar.\"}}'"),
        _ => format!("glia invoke {name} '/?name=Ada'"),
    };
    let mut warning = String::new();
    if !wasm_target_installed() {
        warning =
            "\nnote: the wasm32-wasip2 target is not installed: rustup target add wasm32-wasip2\n"
                .to_string();
    }
    format!(
        "Created {name} ({} template) in {}\n\nBuild, deploy and call it (glia serve must be running):\n\n  \
         cargo build --manifest-path {} --target wasm32-wasip2 --release\n  \
         glia deploy {} --name {name}{models}\n  \
         {call}\n{warning}",
        template.name,
        dir.display(),
        manifest.display(),
        wasm.display(),
    )
}

/// Whether the active Rust toolchain has the `wasm32-wasip2` standard library.
fn wasm_target_installed() -> bool {
    std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .is_none_or(|sysroot| {
            Path::new(&sysroot)
                .join("lib/rustlib/wasm32-wasip2/lib")
                .is_dir()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_suit_a_function_and_a_crate() {
        for good in ["a", "hello-ml", "x9", &"a".repeat(63)] {
            assert!(templates::check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "9a", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(templates::check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rendering_fills_every_placeholder() {
        for template in TEMPLATES {
            let files = templates::render(template, "my-fn", "/x/\"sdk\"");
            for (path, text) in &files {
                assert!(
                    !text.contains("{{"),
                    "{}/{path} keeps a placeholder",
                    template.name
                );
            }
            let manifest = &files
                .iter()
                .find(|(p, _)| *p == "Cargo.toml")
                .expect("manifest")
                .1;
            assert!(manifest.contains("name = \"my-fn\""), "{manifest}");
            assert!(manifest.contains(r#"path = "/x/\"sdk\"""#), "{manifest}");
            let lock = &files
                .iter()
                .find(|(p, _)| *p == "Cargo.lock")
                .expect("lock")
                .1;
            assert!(lock.contains("name = \"my-fn\""), "{lock}");
        }
    }

    #[test]
    fn unknown_templates_list_the_choices() {
        let error = template_name("cnn").expect_err("unknown");
        assert!(
            error.contains("http (") && error.contains("embed ("),
            "{error}"
        );
    }

    #[test]
    fn existing_directories_are_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("keep"), "x").expect("write");
        let error = new(NewArgs {
            name: "f".into(),
            template: "http".into(),
            dir: Some(dir.path().to_path_buf()),
            sdk: None,
        })
        .expect_err("not empty");
        assert!(error.to_string().contains("not empty"), "{error}");
        let error = sdk_dir(Some(dir.path().to_path_buf())).expect_err("not the SDK");
        assert!(error.to_string().contains("is not the glia SDK"), "{error}");
    }
}
