//! A WordPiece tokenizer for BERT-family text models (feature `tokenizer`).
//!
//! It gives exactly the ids Hugging Face `tokenizers` gives with a BERT
//! `tokenizer.json` (checked against it on the MiniLM reference sentences in
//! `functions/embed-text/model/reference.json`), because a model only
//! produces its trained outputs for those ids. The steps, in the
//! reference's order:
//!
//! 1. **Added tokens**: the vocabulary's `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`
//!    and `[MASK]` written literally in the raw text become their ids and
//!    are not normalised.
//! 2. **BertNormalizer**: drop NUL, U+FFFD and control/format characters
//!    (except tab, CR and LF), turn whitespace into spaces, surround CJK
//!    ideographs with spaces; when uncased, strip accents (NFD, then drop
//!    `Mn` marks) and lowercase.
//! 3. **BertPreTokenizer**: split on whitespace, and isolate each
//!    punctuation character (ASCII punctuation or a Unicode `P*` category).
//! 4. **WordPiece**: longest-first match against the vocabulary,
//!    continuation pieces prefixed with `##`; a word longer than 100
//!    characters, or with a part that matches nothing, becomes `[UNK]`.
//! 5. **Truncation and template**: at most `max_tokens - 2` pieces, then
//!    `[CLS] … [SEP]`.
//!
//! Vocabularies are compiled into the component by [`include_vocab!`]: a
//! sorted static table searched by bisection, so a call (which always starts
//! in a fresh instance) never builds a map of the vocabulary, and nothing
//! costs time in proportion to its size. [`BERT_UNCASED`] is the BERT uncased
//! vocabulary (30,522 tokens) that bert-base-uncased and the MiniLM
//! sentence-transformers models use.
//!
//! ```
//! use glia_sdk::text::WordPiece;
//!
//! let tokenizer = WordPiece::bert_uncased();
//! let encoding = tokenizer.encode("Unaffable, isn't it?", 128);
//! assert_eq!(encoding.ids, [101, 14477, 20961, 3468, 1010, 3475, 1005, 1056, 2009, 1029, 102]);
//! assert!(!encoding.truncated);
//!
//! let batch = tokenizer.batch(&[encoding], &[8, 16, 32]).unwrap();
//! assert_eq!(batch.input_ids.dims(), &[1, 16]);
//! ```

use unicode_categories::UnicodeCategories as _;
use unicode_normalization::UnicodeNormalization as _;

use crate::nn::{self, Tensor};

/// Compiles a WordPiece vocabulary file into a static [`Vocab`] at build
/// time.
///
/// The path is relative to the crate's `Cargo.toml`. The file has one token
/// per line, the line number (from 0) being its id, and must hold `[PAD]`,
/// `[UNK]`, `[CLS]` and `[SEP]`. A missing file, an empty line or a
/// duplicate token is a compile error.
///
/// ```ignore
/// use glia_sdk::text::{Vocab, WordPiece, include_vocab};
///
/// static VOCAB: Vocab = include_vocab!("model/vocab.txt");
/// let tokenizer = WordPiece::uncased(&VOCAB);
/// ```
pub use glia_sdk_macros::include_vocab;

/// A vocabulary compiled in by [`include_vocab!`].
#[derive(Debug)]
pub struct Vocab {
    /// Every token, sorted bytewise, concatenated.
    words: &'static str,
    /// Where each sorted token ends in `words` (it starts where the previous
    /// one ends).
    ends: &'static [u32],
    /// The id of each sorted token.
    ids: __private::Ids,
    specials: __private::Specials,
}

/// The BERT uncased WordPiece vocabulary (30,522 tokens).
pub static BERT_UNCASED: Vocab = include_vocab!("vocab/bert-base-uncased.txt");

/// What [`include_vocab!`] expands to. Not a public API.
#[doc(hidden)]
pub mod __private {
    use super::Vocab;

    /// Ids in sorted-token order, as narrow as they fit.
    #[derive(Debug)]
    pub enum Ids {
        U16(&'static [u16]),
        U32(&'static [u32]),
    }

    /// Ids of the special tokens.
    #[derive(Debug, Clone, Copy)]
    pub struct Specials {
        pub pad: u32,
        pub unk: u32,
        pub cls: u32,
        pub sep: u32,
        pub mask: Option<u32>,
    }

    pub const fn vocab(
        words: &'static str,
        ends: &'static [u32],
        ids: Ids,
        specials: Specials,
    ) -> Vocab {
        Vocab {
            words,
            ends,
            ids,
            specials,
        }
    }
}

impl Vocab {
    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it has no token (never, for a compiled vocabulary).
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The id of a token (`"##ing"` for a continuation piece), if any.
    pub fn id(&self, token: &str) -> Option<u32> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.word(mid)?.cmp(token) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.sorted_id(mid),
            }
        }
        None
    }

    /// The `ix`-th token in sorted order.
    fn word(&self, ix: usize) -> Option<&'static str> {
        let start = match ix.checked_sub(1) {
            Some(prev) => *self.ends.get(prev)? as usize,
            None => 0,
        };
        let end = *self.ends.get(ix)? as usize;
        self.words.get(start..end)
    }

    /// The id of the `ix`-th token in sorted order.
    fn sorted_id(&self, ix: usize) -> Option<u32> {
        match self.ids {
            __private::Ids::U16(ids) => ids.get(ix).map(|&id| u32::from(id)),
            __private::Ids::U32(ids) => ids.get(ix).copied(),
        }
    }

    /// `[PAD]`'s id.
    pub fn pad_id(&self) -> u32 {
        self.specials.pad
    }

    /// `[UNK]`'s id.
    pub fn unk_id(&self) -> u32 {
        self.specials.unk
    }

    /// `[CLS]`'s id.
    pub fn cls_id(&self) -> u32 {
        self.specials.cls
    }

    /// `[SEP]`'s id.
    pub fn sep_id(&self) -> u32 {
        self.specials.sep
    }

    /// The special tokens recognised verbatim in raw text (none is a prefix
    /// of another).
    fn added_tokens(&self) -> impl Iterator<Item = (&'static str, u32)> + '_ {
        let s = self.specials;
        [
            ("[PAD]", Some(s.pad)),
            ("[UNK]", Some(s.unk)),
            ("[CLS]", Some(s.cls)),
            ("[SEP]", Some(s.sep)),
            ("[MASK]", s.mask),
        ]
        .into_iter()
        .filter_map(|(token, id)| Some((token, id?)))
    }
}

/// Longer words become `[UNK]` without being split.
const MAX_CHARS_PER_WORD: usize = 100;
/// Prefix of a piece that continues a word.
const CONTINUATION: &str = "##";

/// A WordPiece tokenizer over a compiled vocabulary.
#[derive(Debug, Clone, Copy)]
pub struct WordPiece {
    vocab: &'static Vocab,
    uncased: bool,
}

/// One text's token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// `[CLS]`, the text's pieces, `[SEP]`.
    pub ids: Vec<u32>,
    /// Whether pieces were dropped to fit `max_tokens`.
    pub truncated: bool,
}

/// Encodings padded into a batch: the usual inputs of a BERT-family model,
/// `int64 [batch, seq]` each.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, `[PAD]` after each text's end.
    pub input_ids: Tensor,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
}

impl Batch {
    /// All-zero token type ids of the batch's shape, for models that take
    /// `token_type_ids` (one segment per text).
    pub fn token_type_ids(&self) -> Result<Tensor, nn::Error> {
        Tensor::from_i64(self.input_ids.dims(), &vec![0; self.input_ids.len()])
    }
}

impl WordPiece {
    /// The BERT uncased tokenizer ([`BERT_UNCASED`], lowercased, accents
    /// stripped): bert-base-uncased, MiniLM sentence-transformers.
    pub fn bert_uncased() -> Self {
        Self::uncased(&BERT_UNCASED)
    }

    /// An uncased tokenizer over `vocab`: text is lowercased and accents
    /// stripped before splitting.
    pub fn uncased(vocab: &'static Vocab) -> Self {
        Self {
            vocab,
            uncased: true,
        }
    }

    /// A cased tokenizer over `vocab`: text keeps its case and accents.
    pub fn cased(vocab: &'static Vocab) -> Self {
        Self {
            vocab,
            uncased: false,
        }
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &'static Vocab {
        self.vocab
    }

    /// Tokenizes `text` into at most `max_tokens` ids (`[CLS]` and `[SEP]`
    /// included; `max_tokens` below 2 is taken as 2).
    ///
    /// Work stops once the text is known to be too long, so a huge text
    /// costs no more than its first `max_tokens` pieces (plus its
    /// normalisation).
    pub fn encode(&self, text: &str, max_tokens: usize) -> Encoding {
        let budget = max_tokens.saturating_sub(2);
        let mut pieces = Vec::new();
        let mut scratch = String::new();
        'segments: for segment in self.split_added_tokens(text) {
            match segment {
                Segment::Added(id) => pieces.push(id),
                Segment::Text(text) => {
                    let normalized = normalize(text, self.uncased);
                    for word in pre_tokenize(&normalized) {
                        if pieces.len() > budget {
                            break 'segments;
                        }
                        self.word_pieces(word, &mut pieces, &mut scratch);
                    }
                }
            }
            if pieces.len() > budget {
                break;
            }
        }
        let truncated = pieces.len() > budget;
        pieces.truncate(budget);
        let mut ids = Vec::with_capacity(pieces.len() + 2);
        ids.push(self.vocab.cls_id());
        ids.extend(pieces);
        ids.push(self.vocab.sep_id());
        Encoding { ids, truncated }
    }

    /// Pads `encodings` into one batch as long as the longest, rounded up to
    /// the first of `lengths` (ascending) that fits it, or exactly the
    /// longest when none does (or `lengths` is empty).
    ///
    /// Rounding up to a few lengths keeps the number of input shapes small,
    /// which backends that optimise one plan per shape (tract) reward; for
    /// a model that pools with the attention mask, padding does not change
    /// the result.
    pub fn batch(&self, encodings: &[Encoding], lengths: &[usize]) -> Result<Batch, nn::Error> {
        let longest = encodings.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let seq = lengths
            .iter()
            .copied()
            .find(|&length| length >= longest)
            .unwrap_or(longest);
        let pad = i64::from(self.vocab.pad_id());
        let mut input_ids = Vec::with_capacity(encodings.len() * seq);
        let mut attention_mask = Vec::with_capacity(encodings.len() * seq);
        for encoding in encodings {
            for ix in 0..seq {
                let (id, mask) = encoding
                    .ids
                    .get(ix)
                    .map_or((pad, 0), |&id| (i64::from(id), 1));
                input_ids.push(id);
                attention_mask.push(mask);
            }
        }
        let too_long = || {
            nn::Error::new(
                nn::ErrorCode::TooLarge,
                "padding a batch",
                "more than 2^32 texts or tokens",
            )
        };
        let dims = [
            u32::try_from(encodings.len()).map_err(|_| too_long())?,
            u32::try_from(seq).map_err(|_| too_long())?,
        ];
        Ok(Batch {
            input_ids: Tensor::from_i64(&dims, &input_ids)?,
            attention_mask: Tensor::from_i64(&dims, &attention_mask)?,
        })
    }

    /// Splits the raw text around literal added tokens.
    fn split_added_tokens<'t>(&self, text: &'t str) -> Vec<Segment<'t>> {
        let mut segments = Vec::new();
        let mut rest = text;
        let mut from = 0;
        while let Some(offset) = rest.get(from..).and_then(|tail| tail.find('[')) {
            let at = from + offset;
            let tail = rest.get(at..).unwrap_or_default();
            match self
                .vocab
                .added_tokens()
                .find(|(token, _)| tail.starts_with(token))
            {
                Some((token, id)) => {
                    segments.push(Segment::Text(rest.get(..at).unwrap_or_default()));
                    segments.push(Segment::Added(id));
                    rest = tail.get(token.len()..).unwrap_or_default();
                    from = 0;
                }
                None => from = at + 1,
            }
        }
        segments.push(Segment::Text(rest));
        segments
    }

    /// Appends the WordPiece ids of one word (`[UNK]` if it cannot be
    /// spelled).
    fn word_pieces(&self, word: &str, out: &mut Vec<u32>, scratch: &mut String) {
        let unk = self.vocab.unk_id();
        if word.chars().count() > MAX_CHARS_PER_WORD {
            out.push(unk);
            return;
        }
        let first = out.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let mut found = None;
            while start < end {
                let Some(piece) = word.get(start..end) else {
                    break;
                };
                let id = if start == 0 {
                    self.vocab.id(piece)
                } else {
                    scratch.clear();
                    scratch.push_str(CONTINUATION);
                    scratch.push_str(piece);
                    self.vocab.id(scratch)
                };
                if id.is_some() {
                    found = id;
                    break;
                }
                // Drop the last character.
                end = piece
                    .char_indices()
                    .next_back()
                    .map_or(start, |(at, _)| start + at);
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(first);
                    out.push(unk);
                    return;
                }
            }
        }
    }
}

enum Segment<'a> {
    Text(&'a str),
    Added(u32),
}

/// BertNormalizer with `clean_text` and `handle_chinese_chars`; when
/// `uncased`, also accent stripping and lowercasing.
fn normalize(text: &str, uncased: bool) -> String {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            cleaned.push(' ');
        } else if is_chinese_char(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    if !uncased {
        return cleaned;
    }
    cleaned
        .nfd()
        .filter(|c| !c.is_mark_nonspacing())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Tab, CR and LF count as whitespace, not as control characters.
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

/// The CJK Unified Ideographs blocks, as BERT defines "Chinese character".
fn is_chinese_char(c: char) -> bool {
    matches!(
        u32::from(c),
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// BertPreTokenizer: whitespace separates words, and each punctuation
/// character is a word of its own.
fn pre_tokenize(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::is_whitespace).flat_map(|chunk| {
        let mut words = Vec::new();
        let mut start = 0;
        for (at, c) in chunk.char_indices() {
            if is_punctuation(c) {
                words.push(chunk.get(start..at).unwrap_or_default());
                let end = at + c.len_utf8();
                words.push(chunk.get(at..end).unwrap_or_default());
                start = end;
            }
        }
        words.push(chunk.get(start..).unwrap_or_default());
        words.into_iter().filter(|w| !w.is_empty())
    })
}

#[cfg(test)]
mod tests;
