//! Tensors as plain values: dimensions, element type and little-endian
//! bytes, checked against each other when built and when read, so a shape
//! or type mistake is an error that says what differs, not a garbled model
//! input.

use std::fmt;

use super::{Error, ErrorCode};

/// The element type of a tensor (the `wasi:nn` `tensor-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    F16,
    F32,
    F64,
    Bf16,
    U8,
    I32,
    I64,
}

impl TensorType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
        }
    }

    /// The name `wasi:nn` gives it (`FP32`, `I64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "FP16",
            Self::F32 => "FP32",
            Self::F64 => "FP64",
            Self::Bf16 => "BF16",
            Self::U8 => "U8",
            Self::I32 => "I32",
            Self::I64 => "I64",
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type a tensor's elements can be read as or built from: `f32`,
/// `f64`, `u8`, `i32`, `i64`.
pub trait Element: Copy + sealed::Sealed {
    /// The tensor type of this element.
    const TYPE: TensorType;
    #[doc(hidden)]
    fn write(self, out: &mut Vec<u8>);
    #[doc(hidden)]
    fn read(bytes: &[u8]) -> Option<Self>;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! elements {
    ($($t:ty => $ty:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const TYPE: TensorType = TensorType::$ty;
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map(<$t>::from_le_bytes)
            }
        }
    )*};
}
elements!(f32 => F32, f64 => F64, u8 => U8, i32 => I32, i64 => I64);

/// A tensor: dimensions, element type and data.
///
/// ```
/// use glia_sdk::nn::{Tensor, TensorType};
///
/// let t = Tensor::from_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
/// assert_eq!(t.dims(), &[2, 2]);
/// assert_eq!(t.ty(), TensorType::F32);
/// assert_eq!(t.rows::<f32>().unwrap(), vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
///
/// let wrong = Tensor::from_f32(&[1, 64], &[0.0; 3]).unwrap_err();
/// assert_eq!(wrong.to_string(), "building a tensor: wasi-nn error invalid-argument: \
///     dimensions [1, 64] hold 64 elements, got 3");
/// assert!(t.to_vec::<i64>().is_err(), "an FP32 tensor is not read as I64");
/// ```
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dims: Vec<u32>,
    ty: TensorType,
    data: Vec<u8>,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("dims", &self.dims)
            .field("ty", &self.ty)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl Tensor {
    /// A tensor of `dims` from `values`, which must hold exactly as many
    /// elements as the dimensions say.
    pub fn new<T: Element>(dims: &[u32], values: &[T]) -> Result<Self, Error> {
        let count = element_count(dims)?;
        if values.len() != count {
            return Err(building(format!(
                "dimensions {dims:?} hold {count} elements, got {}",
                values.len()
            )));
        }
        let mut data = Vec::with_capacity(count * T::TYPE.size());
        for &value in values {
            value.write(&mut data);
        }
        Ok(Self {
            dims: dims.to_vec(),
            ty: T::TYPE,
            data,
        })
    }

    /// An `FP32` tensor.
    pub fn from_f32(dims: &[u32], values: &[f32]) -> Result<Self, Error> {
        Self::new(dims, values)
    }

    /// An `I64` tensor (token ids and masks, for most text models).
    pub fn from_i64(dims: &[u32], values: &[i64]) -> Result<Self, Error> {
        Self::new(dims, values)
    }

    /// A tensor of any type from its little-endian bytes (the only way to
    /// build `FP16` and `BF16` tensors).
    pub fn from_bytes(dims: &[u32], ty: TensorType, data: Vec<u8>) -> Result<Self, Error> {
        let count = element_count(dims)?;
        let want = count.checked_mul(ty.size());
        if want != Some(data.len()) {
            return Err(building(format!(
                "dimensions {dims:?} of {ty} take {} bytes, got {}",
                want.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                data.len()
            )));
        }
        Ok(Self {
            dims: dims.to_vec(),
            ty,
            data,
        })
    }

    /// A tensor whose data is known to match its dimensions and type.
    #[cfg_attr(not(feature = "image"), allow(dead_code, reason = "used by `image`"))]
    pub(crate) fn from_parts(dims: Vec<u32>, ty: TensorType, data: Vec<u8>) -> Self {
        debug_assert_eq!(
            element_count(&dims).ok().map(|n| n * ty.size()),
            Some(data.len())
        );
        Self { dims, ty, data }
    }

    /// The dimensions.
    pub fn dims(&self) -> &[u32] {
        &self.dims
    }

    /// The element type.
    pub fn ty(&self) -> TensorType {
        self.ty
    }

    /// The data, little-endian.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The data, taken out.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.ty.size()
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements as `T`, which must be the tensor's type.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, Error> {
        if self.ty != T::TYPE {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "reading a tensor",
                format!("the tensor is {} {:?}, not {}", self.ty, self.dims, T::TYPE),
            ));
        }
        Ok(self
            .data
            .chunks_exact(T::TYPE.size())
            .filter_map(T::read)
            .collect())
    }

    /// The elements as `f32`; the tensor must be `FP32`.
    pub fn to_f32(&self) -> Result<Vec<f32>, Error> {
        self.to_vec()
    }

    /// The elements as `i64`; the tensor must be `I64`.
    pub fn to_i64(&self) -> Result<Vec<i64>, Error> {
        self.to_vec()
    }

    /// The elements split along the first dimension: one `Vec` per row
    /// (for `[batch, n]` outputs, one per batch item).
    pub fn rows<T: Element>(&self) -> Result<Vec<Vec<T>>, Error> {
        let values = self.to_vec::<T>()?;
        let rows = self.dims.first().map_or(1, |&n| n as usize);
        if rows == 0 {
            return Ok(Vec::new());
        }
        let width = values.len() / rows;
        if width == 0 {
            return Ok(vec![Vec::new(); rows]);
        }
        Ok(values.chunks(width).map(<[T]>::to_vec).collect())
    }

    /// Checks the dimensions against `want`, where `None` accepts any size:
    /// `t.expect_dims(&[Some(1), None])`.
    pub fn expect_dims(&self, want: &[Option<u32>]) -> Result<(), Error> {
        let fits = self.dims.len() == want.len()
            && self
                .dims
                .iter()
                .zip(want)
                .all(|(&got, want)| want.is_none_or(|want| want == got));
        if fits {
            return Ok(());
        }
        let want: Vec<String> = want
            .iter()
            .map(|d| d.map_or_else(|| "_".to_string(), |d| d.to_string()))
            .collect();
        Err(Error::new(
            ErrorCode::InvalidArgument,
            "checking a tensor",
            format!(
                "the tensor has dimensions {:?}, expected [{}]",
                self.dims,
                want.join(", ")
            ),
        ))
    }
}

fn building(message: String) -> Error {
    Error::new(ErrorCode::InvalidArgument, "building a tensor", message)
}

/// The number of elements `dims` hold, when it fits in memory.
fn element_count(dims: &[u32]) -> Result<usize, Error> {
    dims.iter()
        .try_fold(1usize, |count, &d| count.checked_mul(d as usize))
        .ok_or_else(|| building(format!("dimensions {dims:?} hold too many elements")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_element_type() {
        let t = Tensor::new(&[3], &[1i64, -2, 3]).expect("i64");
        assert_eq!(t.bytes().len(), 24);
        assert_eq!(t.to_i64().expect("i64"), [1, -2, 3]);
        assert_eq!(
            Tensor::new(&[2], &[1u8, 2])
                .expect("u8")
                .to_vec::<u8>()
                .expect("u8"),
            [1, 2]
        );
        assert_eq!(
            Tensor::new(&[1], &[7i32])
                .expect("i32")
                .to_vec::<i32>()
                .expect("i32"),
            [7]
        );
        assert_eq!(
            Tensor::new(&[1], &[0.5f64])
                .expect("f64")
                .to_vec::<f64>()
                .expect("f64"),
            [0.5]
        );
        assert_eq!(Tensor::new::<f32>(&[0, 4], &[]).expect("empty").len(), 0);
    }

    #[test]
    fn shapes_and_types_are_checked() {
        assert!(Tensor::from_bytes(&[2], TensorType::F16, vec![0; 4]).is_ok());
        let error = Tensor::from_bytes(&[2], TensorType::F16, vec![0; 3]).expect_err("short");
        assert!(error.to_string().contains("take 4 bytes, got 3"), "{error}");
        let error = Tensor::from_f32(&[u32::MAX, u32::MAX, u32::MAX], &[]).expect_err("huge");
        assert!(error.to_string().contains("too many"), "{error}");
        let t = Tensor::from_f32(&[1, 3], &[0.0; 3]).expect("f32");
        let error = t.to_i64().expect_err("type");
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
        assert!(
            error.to_string().contains("FP32 [1, 3], not I64"),
            "{error}"
        );
        assert!(t.expect_dims(&[Some(1), None]).is_ok());
        let error = t.expect_dims(&[None, Some(4)]).expect_err("dims");
        assert!(error.to_string().contains("expected [_, 4]"), "{error}");
    }

    #[test]
    fn rows_split_the_first_dimension() {
        let t = Tensor::from_f32(&[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("f32");
        assert_eq!(t.rows::<f32>().expect("rows").len(), 3);
        assert_eq!(
            Tensor::from_f32(&[0, 2], &[])
                .expect("empty")
                .rows::<f32>()
                .expect("rows")
                .len(),
            0
        );
        assert_eq!(
            Tensor::from_f32(&[], &[9.0])
                .expect("scalar")
                .rows::<f32>()
                .expect("rows"),
            [[9.0]]
        );
    }
}
