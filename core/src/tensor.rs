//! A small row-major f32 tensor with explicit shapes.
//!
//! The training core only needs matrices (a batch of rows) and vectors, so a tensor is a flat
//! `Vec<f32>` plus a shape. Buffers are reused across steps: [`Tensor::resize`] keeps the
//! allocation when the new shape fits in the old capacity, so a training loop with a fixed
//! batch size allocates nothing after its first step.
//!
//! Invariant: `data.len()` is the product of `shape`. Every constructor checks that product
//! with checked arithmetic, because a wrapped product would describe more elements than the
//! buffer holds, and the GEMM kernels trust shapes with raw pointers.

use crate::error::{Result, mul, shape_err, too_large};

/// A dense, row-major `f32` tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensor {
    data: Vec<f32>,
    shape: Vec<usize>,
}

/// Number of elements of `shape`, or [`crate::CoreError::TooLarge`] if the product overflows.
pub fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| mul("tensor shape", n, d))
        .map_err(|_| {
            too_large(
                "tensor shape",
                format!("{shape:?} has more elements than usize holds"),
            )
        })
}

/// `n` zeros, or [`crate::CoreError::TooLarge`] if the allocator refuses (instead of aborting).
fn try_zeroed(n: usize, shape: &[usize]) -> Result<Vec<f32>> {
    let mut data = Vec::new();
    data.try_reserve_exact(n)
        .map_err(|e| too_large("tensor allocation", format!("{shape:?} ({n} f32): {e}")))?;
    data.resize(n, 0.0);
    Ok(data)
}

impl Tensor {
    /// A tensor of zeros with the given shape, for shapes the caller knows to be sane (fixed
    /// sizes, or dimensions already bounded by [`crate::limits`]). Use [`Tensor::try_zeros`] for
    /// a shape that came from outside.
    ///
    /// # Panics
    /// If the shape's element count overflows `usize` (never by wrapping: a wrapped count
    /// would break the length invariant).
    pub fn zeros(shape: &[usize]) -> Self {
        match Self::try_zeros(shape) {
            Ok(t) => t,
            Err(e) => panic!("Tensor::zeros: {e}"),
        }
    }

    /// A tensor of zeros, or a typed error if the element count overflows or the allocation
    /// is refused.
    pub fn try_zeros(shape: &[usize]) -> Result<Self> {
        let n = numel(shape)?;
        Ok(Tensor {
            data: try_zeroed(n, shape)?,
            shape: shape.to_vec(),
        })
    }

    /// Wraps `data` as a tensor of `shape`; fails if the element counts differ.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        let n = numel(shape)?;
        if n != data.len() {
            return Err(shape_err(
                "Tensor::from_vec",
                format!("{n} elements for {shape:?}"),
                &[data.len()],
            ));
        }
        Ok(Tensor {
            data,
            shape: shape.to_vec(),
        })
    }

    /// Copies `rows` (each of equal length) into a `[rows.len(), cols]` matrix.
    pub fn from_rows(rows: &[Vec<f32>]) -> Result<Self> {
        let cols = rows.first().map_or(0, Vec::len);
        let mut data = Vec::with_capacity(mul("Tensor::from_rows", rows.len(), cols)?);
        for r in rows {
            if r.len() != cols {
                return Err(shape_err(
                    "Tensor::from_rows",
                    format!("rows of {cols}"),
                    &[r.len()],
                ));
            }
            data.extend_from_slice(r);
        }
        Ok(Tensor {
            data,
            shape: vec![rows.len(), cols],
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of rows of a matrix (the first dimension; 1 for a vector).
    pub fn rows(&self) -> usize {
        if self.shape.len() >= 2 {
            self.shape[0]
        } else {
            1
        }
    }

    /// Number of columns (the last dimension).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(0)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True if the tensor holds no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The elements, row-major, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the tensor, returning its elements.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Row `i` of a matrix.
    pub fn row(&self, i: usize) -> &[f32] {
        let c = self.cols();
        &self.data[i * c..(i + 1) * c]
    }

    /// Row `i` of a matrix, mutable.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let c = self.cols();
        &mut self.data[i * c..(i + 1) * c]
    }

    /// Changes the shape, reusing the allocation; new elements are zero, kept ones are not
    /// cleared (callers overwrite or call [`Tensor::fill`]). For shapes the caller knows to be
    /// sane, like another tensor's shape; use [`Tensor::try_resize`] for a new product of
    /// dimensions that came from outside.
    ///
    /// # Panics
    /// If the shape's element count overflows `usize`.
    pub fn resize(&mut self, shape: &[usize]) {
        if let Err(e) = self.try_resize(shape) {
            panic!("Tensor::resize: {e}");
        }
    }

    /// Changes the shape like [`Tensor::resize`], or returns a typed error (leaving the tensor
    /// unchanged) if the element count overflows or the allocation is refused.
    pub fn try_resize(&mut self, shape: &[usize]) -> Result<()> {
        let n = numel(shape)?;
        if n > self.data.len() {
            self.data
                .try_reserve(n - self.data.len())
                .map_err(|e| too_large("tensor allocation", format!("{shape:?} ({n} f32): {e}")))?;
        }
        self.data.resize(n, 0.0);
        if self.shape != shape {
            self.shape.clear();
            self.shape.extend_from_slice(shape);
        }
        Ok(())
    }

    /// Sets every element to `v`.
    pub fn fill(&mut self, v: f32) {
        self.data.fill(v);
    }

    /// Checks that the tensor is a matrix with `cols` columns, for API-boundary validation.
    pub fn expect_cols(&self, op: &'static str, cols: usize) -> Result<()> {
        if self.shape.len() != 2 || self.shape[1] != cols {
            return Err(shape_err(op, format!("[*, {cols}]"), &self.shape));
        }
        Ok(())
    }

    /// True if every element is finite.
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|x| x.is_finite())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CoreError;

    /// A shape whose element count wraps to 0 in release arithmetic must not pair with an
    /// empty buffer: that tensor would claim 2^64 elements over none.
    #[test]
    fn overflowing_shapes_are_typed_errors() {
        let wraps_to_zero = [1usize << 32, 1 << 32];
        assert!(matches!(
            Tensor::from_vec(Vec::new(), &wraps_to_zero),
            Err(CoreError::TooLarge { .. })
        ));
        assert!(matches!(
            Tensor::try_zeros(&[usize::MAX, 2]),
            Err(CoreError::TooLarge { .. })
        ));
        let mut t = Tensor::zeros(&[2, 3]);
        assert!(matches!(
            t.try_resize(&wraps_to_zero),
            Err(CoreError::TooLarge { .. })
        ));
        assert_eq!(
            t.shape(),
            &[2, 3],
            "a failed resize leaves the tensor as it was"
        );
        assert_eq!(t.len(), 6);
        // Representable, but more than any allocator gives: an error, not an abort.
        assert!(matches!(
            Tensor::try_zeros(&[1 << 40, 1 << 20]),
            Err(CoreError::TooLarge { .. })
        ));
        assert_eq!(numel(&[3, 4, 5]).ok(), Some(60));
        assert_eq!(numel(&[]).ok(), Some(1));
    }
}
