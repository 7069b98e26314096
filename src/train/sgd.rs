//! SGD with momentum and weight decay, as `torch.optim.SGD` computes it
//! (dampening 0, no Nesterov), with its state exposed for checkpoints.
//!
//! tch's own optimizer keeps its momentum buffers inside libtorch where they
//! cannot be saved, and a resumed run would then differ from an uninterrupted
//! one.

use std::collections::BTreeMap;

use tch::{nn::VarStore, Tensor};

/// Prefix of the momentum buffers in a checkpoint.
pub const BUFFER_PREFIX: &str = "optimizer.momentum_buffer.";

/// SGD over the trainable variables of a VarStore.
#[derive(Debug)]
pub struct Sgd {
    momentum: f64,
    weight_decay: f64,
    /// Trainable variables by name, sorted so that updates run in one order.
    params: BTreeMap<String, Tensor>,
    /// Momentum buffers, created at a variable's first update as in PyTorch.
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    /// Collects the variables of `vs` that require a gradient.
    pub fn new(vs: &VarStore, momentum: f64, weight_decay: f64) -> Sgd {
        let params = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        Sgd { momentum, weight_decay, params, buffers: BTreeMap::new() }
    }

    /// Clears the gradients of every variable.
    pub fn zero_grad(&mut self) {
        for p in self.params.values_mut() {
            p.zero_grad();
        }
    }

    /// Applies one update: `d = grad + wd·p`, `buf = μ·buf + d` (`buf = d` at
    /// the first step), `p -= lr·buf`. Variables without a gradient are left
    /// alone, as in PyTorch.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for (name, p) in self.params.iter_mut() {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let d_p =
                    if self.weight_decay != 0.0 { &grad + &*p * self.weight_decay } else { grad };
                let buf = match self.buffers.get_mut(name) {
                    Some(buf) => {
                        let _ = buf.g_mul_scalar_(self.momentum).g_add_(&d_p);
                        buf.shallow_clone()
                    }
                    None => {
                        let buf = d_p.detach().copy();
                        self.buffers.insert(name.clone(), buf.shallow_clone());
                        buf
                    }
                };
                let _ = p.g_sub_(&(buf * lr));
            }
        });
    }

    /// Returns the momentum buffers, named with [`BUFFER_PREFIX`].
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.buffers
            .iter()
            .map(|(n, t)| (format!("{BUFFER_PREFIX}{n}"), t.shallow_clone()))
            .collect()
    }

    /// Restores the momentum buffers from checkpoint entries; entries of
    /// variables this optimizer does not hold are an error.
    pub fn load_state(&mut self, entries: Vec<(String, Tensor)>) -> anyhow::Result<()> {
        self.buffers.clear();
        for (key, tensor) in entries {
            let Some(name) = key.strip_prefix(BUFFER_PREFIX) else { continue };
            let Some(param) = self.params.get(name) else {
                anyhow::bail!("checkpoint has a momentum buffer for '{name}', which is not a trainable variable of this run");
            };
            if tensor.size() != param.size() {
                anyhow::bail!(
                    "checkpoint momentum buffer for '{name}' has shape {:?}, the variable {:?}",
                    tensor.size(),
                    param.size()
                );
            }
            let buf = tensor.to_device(param.device()).to_kind(param.kind());
            self.buffers.insert(name.to_owned(), buf);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    /// Expected values: torch.optim.SGD([p], lr=0.1, momentum=0.9,
    /// weight_decay=0.5) on p = [1, -2] with the loss sum(p²), two steps:
    /// step 1: g = [2,-4], d = [2.5,-5], p = [0.75,-1.5];
    /// step 2: g = [1.5,-3], d = [1.875,-3.75], buf = [4.125,-8.25],
    /// p = [0.3375,-0.675].
    #[test]
    fn matches_torch_sgd_by_hand() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("p", &Tensor::from_slice(&[1.0f64, -2.0]).to_kind(Kind::Float));
        let mut sgd = Sgd::new(&vs, 0.9, 0.5);
        for _ in 0..2 {
            sgd.zero_grad();
            (&p * &p).sum(Kind::Float).backward();
            sgd.step(0.1);
        }
        let got = Vec::<f32>::try_from(&p).unwrap();
        assert!((got[0] - 0.3375).abs() < 1e-6, "{got:?}");
        assert!((got[1] + 0.675).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn state_round_trips() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("w", &Tensor::from_slice(&[3.0f32]));
        let mut sgd = Sgd::new(&vs, 0.9, 0.0);
        sgd.zero_grad();
        (&p * 2.0).sum(Kind::Float).backward();
        sgd.step(1.0);
        let state = sgd.state();
        assert_eq!(state.len(), 1);
        let mut restored = Sgd::new(&vs, 0.9, 0.0);
        restored.load_state(state).unwrap();
        assert_eq!(restored.state()[0].1.double_value(&[0]), 2.0);
        let bad = vec![(format!("{BUFFER_PREFIX}missing"), Tensor::from_slice(&[1.0f32]))];
        let err = restored.load_state(bad).unwrap_err().to_string();
        assert!(err.contains("'missing'"), "{err}");
    }
}
