//! The model's tensors: token ids padded into one batch on the way in, the
//! pooled sentence vectors checked and L2-normalised on the way out.
//!
//! Padding is `[PAD]` with attention mask 0; the model's pooled output (its
//! output `461`) is the mean of the token embeddings over the mask, so
//! padding does not change a text's vector.
//!
//! A batch is padded to the longest text rounded up to one of a few lengths
//! (`SEQ_BUCKETS`), not to the longest text exactly: a backend that
//! optimises one plan per input shape (tract takes about 40 ms per new shape
//! for this model, against 3 to 20 ms for a run) then sees five shapes per
//! batch size instead of up to 128, so its plans stay cached. Padding a short
//! text to 8 or 16 tokens costs well under a millisecond.

use crate::wordpiece::{Encoding, PAD};

/// Length of a sentence vector.
pub const DIMENSIONS: usize = 384;
/// The sequence lengths a batch is padded to (the longest text's length
/// when it exceeds them all).
const SEQ_BUCKETS: [usize; 5] = [8, 16, 32, 64, 128];
/// Below this norm a vector is left as it is rather than blown up
/// (the `eps` of sentence-transformers' `Normalize`).
const MIN_NORM: f32 = 1e-12;

/// The two `int64 [batch, seq]` inputs, as little-endian bytes.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, seq]`.
    pub dims: [u32; 2],
    pub input_ids: Vec<u8>,
    pub attention_mask: Vec<u8>,
}

/// Pads the encodings to the longest one, rounded up to a `SEQ_BUCKETS` length.
pub fn pad(encodings: &[Encoding]) -> Batch {
    let longest = encodings.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let seq = SEQ_BUCKETS
        .into_iter()
        .find(|&bucket| bucket >= longest)
        .unwrap_or(longest);
    let mut input_ids = Vec::with_capacity(encodings.len() * seq * 8);
    let mut attention_mask = Vec::with_capacity(encodings.len() * seq * 8);
    for e in encodings {
        for ix in 0..seq {
            let (id, mask) = e.ids.get(ix).map_or((PAD, 0i64), |&id| (id, 1));
            input_ids.extend_from_slice(&i64::from(id).to_le_bytes());
            attention_mask.extend_from_slice(&mask.to_le_bytes());
        }
    }
    Batch {
        dims: [
            u32::try_from(encodings.len()).unwrap_or(u32::MAX),
            u32::try_from(seq).unwrap_or(u32::MAX),
        ],
        input_ids,
        attention_mask,
    }
}

/// Splits the pooled `f32 [batch, DIMENSIONS]` output into `batch` unit
/// vectors; the error says how the output differs from that.
pub fn sentence_vectors(dims: &[u32], data: &[u8], batch: usize) -> Result<Vec<Vec<f32>>, String> {
    let want = [batch, DIMENSIONS];
    if dims.len() != 2
        || dims
            .iter()
            .zip(want)
            .any(|(&got, want)| got as usize != want)
    {
        return Err(format!(
            "the model's pooled output has dimensions {dims:?}, expected {want:?}"
        ));
    }
    if data.len() != batch * DIMENSIONS * 4 {
        return Err(format!(
            "the model's pooled output holds {} bytes, expected {}",
            data.len(),
            batch * DIMENSIONS * 4
        ));
    }
    Ok(data
        .chunks_exact(DIMENSIONS * 4)
        .map(|row| {
            let mut v: Vec<f32> = row
                .chunks_exact(4)
                .filter_map(|b| b.try_into().ok().map(f32::from_le_bytes))
                .collect();
            normalize(&mut v);
            v
        })
        .collect())
}

/// Scales `v` to unit length (leaves a zero vector alone).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > MIN_NORM {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The dot product (the cosine similarity of unit vectors).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wordpiece::{CLS, SEP};

    fn i64s(bytes: &[u8]) -> Vec<i64> {
        bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    }

    #[test]
    fn pads_to_the_longest_with_mask_zero() {
        let batch = pad(&[
            Encoding {
                ids: vec![CLS, 7, SEP],
                truncated: false,
            },
            Encoding {
                ids: vec![CLS, SEP],
                truncated: false,
            },
        ]);
        assert_eq!(batch.dims, [2, 8]);
        assert_eq!(
            i64s(&batch.input_ids),
            vec![101, 7, 102, 0, 0, 0, 0, 0, 101, 102, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            i64s(&batch.attention_mask),
            vec![1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn lengths_round_up_to_a_bucket() {
        let seq = |len: usize| {
            pad(&[Encoding {
                ids: vec![CLS; len],
                truncated: false,
            }])
            .dims[1]
        };
        for (len, want) in [(2, 8), (8, 8), (9, 16), (33, 64), (128, 128), (130, 130)] {
            assert_eq!(seq(len), want, "{len} tokens");
        }
        assert_eq!(pad(&[]).dims, [0, 8]);
    }

    #[test]
    fn vectors_are_unit_length_and_shapes_are_checked() {
        let data: Vec<u8> = (0..2 * DIMENSIONS)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let vs = sentence_vectors(&[2, 384], &data, 2).expect("valid");
        assert_eq!(vs.len(), 2);
        for v in &vs {
            assert!((dot(v, v) - 1.0).abs() < 1e-5);
        }
        assert!(sentence_vectors(&[1, 384], &data, 2).is_err());
        assert!(sentence_vectors(&[2, 384, 1], &data, 2).is_err());
        assert!(sentence_vectors(&[2, 384], &data[4..], 2).is_err());
        let mut zero = vec![0.0; 4];
        normalize(&mut zero);
        assert_eq!(zero, vec![0.0; 4]);
    }
}
