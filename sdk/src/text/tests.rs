use super::*;

/// Hugging Face `tokenizers`' ids for the MiniLM reference sentences
/// (`functions/embed-text/model/reference.py`).
const REFERENCE: &str = include_str!("../../../functions/embed-text/model/reference.json");
const VOCAB_TXT: &str = include_str!("../../vocab/bert-base-uncased.txt");
const MAX_TOKENS: usize = 128;
const CLS: u32 = 101;
const SEP: u32 = 102;
const UNK: u32 = 100;

fn encode(text: &str, max_tokens: usize) -> Encoding {
    WordPiece::bert_uncased().encode(text, max_tokens)
}

#[test]
fn matches_the_reference_tokenizer_on_every_sentence() {
    let reference: serde_json::Value = serde_json::from_str(REFERENCE).expect("json");
    let sentences = reference["sentences"].as_array().expect("sentences");
    assert!(sentences.len() >= 20, "{} sentences", sentences.len());
    for s in sentences {
        let text = s["text"].as_str().expect("text");
        let want: Vec<u32> = s["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| u32::try_from(id.as_u64().expect("id")).expect("u32"))
            .collect();
        let got = encode(text, MAX_TOKENS);
        assert_eq!(got.ids, want, "text {text:?}");
        assert_eq!(
            got.truncated,
            s["truncated"].as_bool().expect("truncated"),
            "text {text:?}"
        );
    }
}

#[test]
fn special_ids_match_the_vocabulary() {
    let vocab = &BERT_UNCASED;
    for (token, id) in vocab.added_tokens() {
        assert_eq!(vocab.id(token), Some(id), "{token}");
    }
    assert_eq!(
        (
            vocab.pad_id(),
            vocab.unk_id(),
            vocab.cls_id(),
            vocab.sep_id()
        ),
        (0, UNK, CLS, SEP)
    );
    assert_eq!(vocab.len(), 30522);
    assert!(matches!(vocab.ids, __private::Ids::U16(_)));
}

#[test]
fn every_vocabulary_line_is_found_with_its_id() {
    for (id, token) in VOCAB_TXT.lines().enumerate() {
        assert_eq!(BERT_UNCASED.id(token), u32::try_from(id).ok(), "{token:?}");
    }
    for missing in ["", "##", "zzzzzzzz", "[pad]", "\u{10FFFF}"] {
        assert_eq!(BERT_UNCASED.id(missing), None, "{missing:?}");
    }
}

#[test]
fn continuation_pieces_and_unknown_words() {
    // "unaffable" → un ##af ##fable
    assert_eq!(
        encode("unaffable", MAX_TOKENS).ids,
        vec![CLS, 14477, 20961, 3468, SEP]
    );
    // An unspellable piece makes the whole word unknown.
    assert_eq!(encode("pizza🍕", MAX_TOKENS).ids, vec![CLS, UNK, SEP]);
    let long = "a".repeat(MAX_CHARS_PER_WORD + 1);
    assert_eq!(encode(&long, MAX_TOKENS).ids, vec![CLS, UNK, SEP]);
}

#[test]
fn cased_keeps_case_and_accents() {
    let cased = WordPiece::cased(&BERT_UNCASED);
    // The uncased vocabulary has no "Hello": cased text misses it.
    assert_eq!(cased.encode("Hello", MAX_TOKENS).ids, vec![CLS, UNK, SEP]);
    assert_eq!(
        WordPiece::bert_uncased().encode("Héllo", MAX_TOKENS).ids,
        vec![CLS, 7592, SEP]
    );
}

#[test]
fn truncation_keeps_cls_and_sep() {
    let text = "word ".repeat(1000);
    for max in [0, 1, 2, 3, 16, 128] {
        let e = encode(&text, max);
        assert_eq!(e.ids.len(), max.max(2), "max {max}");
        assert_eq!(e.ids.first(), Some(&CLS));
        assert_eq!(e.ids.last(), Some(&SEP));
        assert!(e.truncated);
    }
    let exact = "word ".repeat(126);
    let e = encode(&exact, 128);
    assert_eq!(e.ids.len(), 128);
    assert!(!e.truncated);
    let e = encode(&(exact + "word"), 128);
    assert_eq!(e.ids.len(), 128);
    assert!(e.truncated);
}

#[test]
fn added_tokens_are_found_anywhere_in_the_raw_text() {
    assert_eq!(
        encode("a[MASK]b [SEP][[UNK]", MAX_TOKENS).ids,
        vec![CLS, 1037, 103, 1038, SEP, 1031, UNK, SEP]
    );
    // Only the exact, uppercase spelling counts.
    assert_eq!(
        encode("[mask]", MAX_TOKENS).ids,
        vec![CLS, 1031, 7308, 1033, SEP]
    );
}

#[test]
fn nothing_but_whitespace_or_controls_is_empty() {
    for text in ["", " ", "\t\r\n", "\u{200b}\u{0}\u{fffd}", "\u{3000}"] {
        assert_eq!(encode(text, MAX_TOKENS).ids, vec![CLS, SEP], "{text:?}");
    }
}

#[test]
fn batches_pad_to_a_length_with_mask_zero() {
    let tokenizer = WordPiece::bert_uncased();
    let batch = tokenizer
        .batch(
            &[
                Encoding {
                    ids: vec![CLS, 7, SEP],
                    truncated: false,
                },
                Encoding {
                    ids: vec![CLS, SEP],
                    truncated: false,
                },
            ],
            &[8, 16],
        )
        .expect("batch");
    assert_eq!(batch.input_ids.dims(), [2, 8]);
    assert_eq!(
        batch.input_ids.to_i64().expect("i64"),
        vec![101, 7, 102, 0, 0, 0, 0, 0, 101, 102, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        batch.attention_mask.to_i64().expect("i64"),
        vec![1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        batch
            .token_type_ids()
            .expect("zeros")
            .to_i64()
            .expect("i64"),
        vec![0; 16]
    );

    let seq = |len: usize| {
        let encoding = Encoding {
            ids: vec![CLS; len],
            truncated: false,
        };
        tokenizer
            .batch(&[encoding], &[8, 16, 32, 64, 128])
            .expect("batch")
            .input_ids
            .dims()[1]
    };
    for (len, want) in [(2, 8), (8, 8), (9, 16), (33, 64), (128, 128), (130, 130)] {
        assert_eq!(seq(len), want, "{len} tokens");
    }
    assert_eq!(
        tokenizer.batch(&[], &[8]).expect("empty").input_ids.dims(),
        [0, 8]
    );
    let exact = tokenizer
        .batch(
            &[Encoding {
                ids: vec![CLS, SEP],
                truncated: false,
            }],
            &[],
        )
        .expect("batch");
    assert_eq!(exact.input_ids.dims(), [1, 2]);
}
