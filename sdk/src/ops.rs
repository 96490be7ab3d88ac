//! Small numeric helpers for model outputs: softmax, argmax, top-k, vector
//! normalisation and similarity. NaN never panics: it sorts below every
//! number.
//!
//! ```
//! use glia_sdk::ops;
//!
//! let probabilities = ops::softmax(&[1.0, 3.0, 2.0]);
//! assert_eq!(ops::argmax(&probabilities), Some(1));
//! let top = ops::top_k(&probabilities, 2);
//! assert_eq!(top.iter().map(|&(ix, _)| ix).collect::<Vec<_>>(), [1, 2]);
//! assert!((probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-6);
//! ```

use std::cmp::Ordering;

/// `exp(x - max) / sum`, computed stably. Empty in, empty out.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        exps.into_iter().map(|e| e / sum).collect()
    } else {
        exps
    }
}

/// Compares scores with NaN lowest.
fn by_score(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.total_cmp(&b),
    }
}

/// The index of the largest value (the first one on ties); `None` when empty.
pub fn argmax(values: &[f32]) -> Option<usize> {
    values
        .iter()
        .enumerate()
        .rev()
        .max_by(|a, b| by_score(*a.1, *b.1))
        .map(|(ix, _)| ix)
}

/// The `k` largest values with their indices, largest first (lower index
/// first on ties).
pub fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut indexed: Vec<(usize, f32)> = values.iter().copied().enumerate().collect();
    indexed.sort_by(|a, b| by_score(b.1, a.1).then(a.0.cmp(&b.0)));
    indexed.truncate(k);
    indexed
}

/// Scales `v` to unit length; a vector of norm below 1e-12 stays as it is.
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 1e-12 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The dot product (the cosine similarity of unit vectors). Extra elements
/// of the longer vector are ignored.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The cosine similarity of two vectors; 0 when either is zero.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let denominator = norm(a) * norm(b);
    if denominator > 0.0 {
        dot(a, b) / denominator
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_handles_edges() {
        let p = softmax(&[1000.0, 1000.0]);
        assert_eq!(p, [0.5, 0.5]);
        assert!(softmax(&[]).is_empty());
        let p = softmax(&[0.0, f32::NEG_INFINITY]);
        assert_eq!(p, [1.0, 0.0]);
    }

    #[test]
    fn argmax_and_top_k_with_ties_and_nan() {
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, 0.5]), Some(1));
        assert_eq!(
            top_k(&[0.1, f32::NAN, 0.7, 0.7], 3),
            [(2, 0.7), (3, 0.7), (0, 0.1)]
        );
        assert_eq!(top_k(&[1.0], 5).len(), 1);
    }

    #[test]
    fn vectors() {
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut zero = [0.0; 3];
        l2_normalize(&mut zero);
        assert_eq!(zero, [0.0; 3]);
        assert_eq!(dot(&[1.0, 2.0], &[3.0, 4.0, 5.0]), 11.0);
        assert!((cosine_similarity(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert_eq!(cosine_similarity(&[0.0], &[1.0]), 0.0);
    }
}
