//! Trainable parameters and the visitor through which optimizers, clipping and checkpoints
//! reach them.

use crate::tensor::Tensor;

/// Which gradients a backward pass produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grads {
    /// Parameter gradients of the task loss and of the MoE auxiliary losses, and `dx`.
    All,
    /// Parameter gradients of the task loss alone, and `dx`: the auxiliary losses belong to
    /// the network's own training, not to an objective taken through it.
    Task,
    /// `dx` alone, parameter gradients untouched: the input gradient through a network
    /// treated as frozen, which skips every weight-gradient product.
    Input,
}

impl Grads {
    /// Whether the MoE auxiliary losses' gradients are added.
    pub(crate) fn aux(self) -> bool {
        self == Grads::All
    }

    /// Whether parameter gradients are accumulated.
    pub(crate) fn params(self) -> bool {
        self != Grads::Input
    }
}

/// A trainable tensor with its gradient.
#[derive(Clone, Debug)]
pub struct Param {
    /// Stable, dotted name (`blocks.0.moe.experts.3.w1`); checkpoints are keyed on it.
    pub name: String,
    /// Current value (the f32 master weights).
    pub value: Tensor,
    /// Gradient accumulated by backward passes since the last [`Module::zero_grad`].
    pub grad: Tensor,
    /// Whether AdamW's decoupled weight decay applies (weights yes; biases and norms no).
    pub decay: bool,
}

impl Param {
    /// A parameter holding `value`, with a zero gradient of the same shape.
    pub fn new(name: impl Into<String>, value: Tensor, decay: bool) -> Self {
        let grad = Tensor::zeros(value.shape());
        Param {
            name: name.into(),
            value,
            grad,
            decay,
        }
    }
}

/// Anything that owns parameters. Visiting order is fixed (declaration order), which makes
/// optimizer state, gradient norms and checkpoints deterministic.
pub trait Module {
    /// Calls `f` on every parameter, in a fixed order.
    fn visit_params<'a>(&'a self, f: &mut dyn FnMut(&'a Param));
    /// Calls `f` on every parameter mutably, in the same order.
    fn visit_params_mut<'a>(&'a mut self, f: &mut dyn FnMut(&'a mut Param));

    /// Sets every gradient to zero.
    fn zero_grad(&mut self) {
        self.visit_params_mut(&mut |p| p.grad.fill(0.0));
    }

    /// Total number of scalar parameters.
    fn num_params(&self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |p| n += p.value.len());
        n
    }
}
