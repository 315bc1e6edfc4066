//! A small row-major f32 tensor with explicit shapes.
//!
//! The training core only needs matrices (a batch of rows) and vectors, so a tensor is a flat
//! `Vec<f32>` plus a shape. Buffers are reused across steps: [`Tensor::resize`] keeps the
//! allocation when the new shape fits in the old capacity, so a training loop with a fixed
//! batch size allocates nothing after its first step.

use crate::error::{Result, shape_err};

/// A dense, row-major `f32` tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tensor {
    data: Vec<f32>,
    shape: Vec<usize>,
}

impl Tensor {
    /// A tensor of zeros with the given shape.
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor {
            data: vec![0.0; shape.iter().product()],
            shape: shape.to_vec(),
        }
    }

    /// Wraps `data` as a tensor of `shape`; fails if the element counts differ.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
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
        let mut data = Vec::with_capacity(rows.len() * cols);
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
    /// cleared (callers overwrite or call [`Tensor::fill`]).
    pub fn resize(&mut self, shape: &[usize]) {
        let n: usize = shape.iter().product();
        self.data.resize(n, 0.0);
        if self.shape != shape {
            self.shape.clear();
            self.shape.extend_from_slice(shape);
        }
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
