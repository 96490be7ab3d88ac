//! Procedural macros re-exported by `glia-sdk`; use them through it
//! (`glia_sdk::handler`, `glia_sdk::text::include_vocab!`), never directly:
//! their expansions name `::glia_sdk` paths.

use std::path::PathBuf;

use proc_macro::TokenStream;
use proc_macro2::{Literal, TokenStream as TokenStream2};
use quote::quote;
use syn::parse::Parser as _;
use syn::spanned::Spanned as _;
use syn::{Expr, ItemFn, LitStr};

/// Makes `fn NAME(request: Request) -> impl IntoResponse` the component's
/// `wasi:http/incoming-handler` export. See `glia_sdk::handler`.
#[proc_macro_attribute]
pub fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand_handler(args.into(), item.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

fn expand_handler(args: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let mut max_body: Option<Expr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("max_body") {
            max_body = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("unknown argument; `#[handler]` takes `max_body = BYTES`"))
        }
    });
    parser.parse2(args)?;

    let function: ItemFn = syn::parse2(item)?;
    let signature = &function.sig;
    if let Some(asyncness) = signature.asyncness {
        return Err(syn::Error::new(
            asyncness.span(),
            "a glia handler is a plain `fn`: wasi:nn calls and the request body are \
             synchronous in WASI 0.2 (see docs/authoring.md)",
        ));
    }
    if !signature.generics.params.is_empty() {
        return Err(syn::Error::new(
            signature.generics.span(),
            "a glia handler cannot be generic",
        ));
    }
    if signature.inputs.len() != 1 {
        return Err(syn::Error::new(
            signature.inputs.span(),
            "a glia handler takes one argument, the `glia_sdk::Request`",
        ));
    }
    let name = &signature.ident;
    let max_body = match max_body {
        Some(expr) => quote!(#expr),
        None => quote!(::glia_sdk::DEFAULT_MAX_BODY),
    };
    Ok(quote! {
        #function

        const _: () = {
            struct GliaHandler;

            impl ::glia_sdk::__private::Guest for GliaHandler {
                fn handle(
                    request: ::glia_sdk::__private::IncomingRequest,
                    response_out: ::glia_sdk::__private::ResponseOutparam,
                ) {
                    ::glia_sdk::__private::serve(request, response_out, #max_body, #name);
                }
            }

            ::glia_sdk::__private::wasip2::http::proxy::export!(GliaHandler);
        };
    })
}

/// Compiles a WordPiece vocabulary file (one token per line; the line number
/// is the token's id; `[PAD]`, `[UNK]`, `[CLS]` and `[SEP]` required) into a
/// static, sorted `glia_sdk::text::Vocab`. See `glia_sdk::text::include_vocab`.
#[proc_macro]
pub fn include_vocab(input: TokenStream) -> TokenStream {
    match expand_vocab(input.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// Tokens the tokenizer needs to know by id, when the vocabulary has them.
const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

fn expand_vocab(input: TokenStream2) -> syn::Result<TokenStream2> {
    let literal: LitStr = syn::parse2(input)?;
    let span = literal.span();
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .map_err(|_| syn::Error::new(span, "CARGO_MANIFEST_DIR is not set: build with cargo"))?;
    let path = PathBuf::from(manifest).join(literal.value());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| syn::Error::new(span, format!("reading {}: {e}", path.display())))?;
    let tables = Tables::build(&text)
        .map_err(|e| syn::Error::new(span, format!("{}: {e}", path.display())))?;

    let words = Literal::string(&tables.words);
    let ends = tables.ends.iter().map(|&end| Literal::u32_unsuffixed(end));
    let ids = if tables.ids.iter().all(|&id| id <= u32::from(u16::MAX)) {
        let ids = tables
            .ids
            .iter()
            .map(|&id| Literal::u16_unsuffixed(u16::try_from(id).unwrap_or(u16::MAX)));
        quote!(::glia_sdk::text::__private::Ids::U16(&[#(#ids),*]))
    } else {
        let ids = tables.ids.iter().map(|&id| Literal::u32_unsuffixed(id));
        quote!(::glia_sdk::text::__private::Ids::U32(&[#(#ids),*]))
    };
    let required = |token: &str| {
        tables
            .special(token)
            .map(Literal::u32_unsuffixed)
            .ok_or_else(|| {
                syn::Error::new(
                    span,
                    format!(
                        "{}: a WordPiece vocabulary needs the token {token}",
                        path.display()
                    ),
                )
            })
    };
    let (pad, unk, cls, sep) = (
        required("[PAD]")?,
        required("[UNK]")?,
        required("[CLS]")?,
        required("[SEP]")?,
    );
    let mask = match tables.special("[MASK]") {
        Some(id) => {
            let id = Literal::u32_unsuffixed(id);
            quote!(::core::option::Option::Some(#id))
        }
        None => quote!(::core::option::Option::None),
    };
    // `include_bytes!` makes cargo rebuild when the file changes.
    let tracked = Literal::string(&path.display().to_string());
    Ok(quote! {{
        const _: &[u8] = include_bytes!(#tracked);
        ::glia_sdk::text::__private::vocab(
            #words,
            &[#(#ends),*],
            #ids,
            ::glia_sdk::text::__private::Specials {
                pad: #pad,
                unk: #unk,
                cls: #cls,
                sep: #sep,
                mask: #mask,
            },
        )
    }})
}

/// The vocabulary sorted bytewise: every token concatenated, where each one
/// ends, and its id.
struct Tables {
    words: String,
    ends: Vec<u32>,
    ids: Vec<u32>,
    /// `(token, id)` of the special tokens present.
    specials: Vec<(&'static str, u32)>,
}

impl Tables {
    fn build(text: &str) -> Result<Self, String> {
        let mut entries = text
            .lines()
            .enumerate()
            .map(|(line, token)| {
                if token.is_empty() {
                    return Err(format!("line {}: empty token", line + 1));
                }
                let id = u32::try_from(line).map_err(|_| "more than 2^32 tokens".to_string())?;
                Ok((token, id))
            })
            .collect::<Result<Vec<(&str, u32)>, String>>()?;
        if entries.is_empty() {
            return Err("the vocabulary is empty".to_string());
        }
        let specials = SPECIALS
            .iter()
            .filter_map(|&special| {
                entries
                    .iter()
                    .find(|(token, _)| *token == special)
                    .map(|&(_, id)| (special, id))
            })
            .collect();
        entries.sort_unstable();
        for pair in entries.windows(2) {
            if let [(a, _), (b, _)] = pair
                && a == b
            {
                return Err(format!("token {a:?} appears twice"));
            }
        }
        let mut words = String::with_capacity(text.len());
        let mut ends = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        for (token, id) in entries {
            words.push_str(token);
            ends.push(u32::try_from(words.len()).map_err(|_| "over 4 GiB of tokens".to_string())?);
            ids.push(id);
        }
        Ok(Self {
            words,
            ends,
            ids,
            specials,
        })
    }

    fn special(&self, token: &str) -> Option<u32> {
        self.specials
            .iter()
            .find(|(special, _)| *special == token)
            .map(|&(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_with_ids_and_specials() {
        let tables = Tables::build("[PAD]\nb\na\n[UNK]\nab\n").expect("valid");
        assert_eq!(tables.words, "[PAD][UNK]aabb");
        assert_eq!(tables.ends, vec![5, 10, 11, 13, 14]);
        assert_eq!(tables.ids, vec![0, 3, 2, 4, 1]);
        assert_eq!(tables.special("[PAD]"), Some(0));
        assert_eq!(tables.special("[UNK]"), Some(3));
        assert_eq!(tables.special("[CLS]"), None);
    }

    #[test]
    fn bad_vocabularies_say_why() {
        for (text, want) in [
            ("", "empty"),
            ("a\n\nb", "line 2: empty token"),
            ("a\nb\na", "appears twice"),
        ] {
            let Err(error) = Tables::build(text) else {
                panic!("{text:?} was accepted");
            };
            assert!(error.contains(want), "{text:?}: {error}");
        }
    }

    #[test]
    fn async_and_wrong_arity_handlers_are_refused() {
        for (item, want) in [
            (
                quote!(
                    async fn handle(r: Request) -> Response {
                        todo!()
                    }
                ),
                "plain `fn`",
            ),
            (
                quote!(
                    fn handle() -> Response {
                        todo!()
                    }
                ),
                "one argument",
            ),
            (
                quote!(
                    fn handle<T>(r: T) -> Response {
                        todo!()
                    }
                ),
                "generic",
            ),
        ] {
            let error = expand_handler(TokenStream2::new(), item).expect_err("refused");
            assert!(error.to_string().contains(want), "{error}");
        }
        let error = expand_handler(
            quote!(size = 3),
            quote!(
                fn h(r: Request) {}
            ),
        )
        .expect_err("refused");
        assert!(error.to_string().contains("max_body"), "{error}");
        assert!(
            expand_handler(
                quote!(max_body = 1 << 20),
                quote!(
                    fn h(r: Request) {}
                )
            )
            .is_ok()
        );
    }
}
