//! DSNO (Zheng et al. 2023, docs/METHOD.md §7): the operator (teacher backbone + TimeConv,
//! initialised from the teacher) regresses the teacher's x̂ at all M output times,
//! `Σ_m w_m · L(pred_m, target_m) / M` with `w_m = clamp(exp(λ_m/2), 1, 1e4)`.
use super::{weights_on, Architecture, Batch, Context, Distance, Method, Needs, Objective, Spec};
use crate::Result;
use tch::Tensor;

pub const SPEC: Spec = Spec {
    method: Method::DSNO,
    summary: "the operator: x_T → the teacher's x̂ at all M output times (Zheng et al. 2023)",
    architecture: Architecture::Operator,
    needs: Needs {
        trajectories: true,
        teacher: false,
    },
    build,
};

/// `w_m = clamp(exp(λ_m/2), 1, 1e4)`.
pub fn time_weights(lambdas: &[f64]) -> Vec<f64> {
    lambdas
        .iter()
        .map(|l| (l / 2.0).exp().clamp(1.0, 1e4))
        .collect()
}

struct Dsno {
    distance: Distance,
    weights: Tensor,
    times: Vec<f64>,
}

fn build(c: &Context) -> Result<Box<dyn Objective>> {
    let lambdas: Vec<f64> = c.times.iter().map(|&t| c.schedule.lambda(t)).collect();
    Ok(Box::new(Dsno {
        distance: Distance::new(c)?,
        weights: weights_on(&time_weights(&lambdas), c.device),
        times: c.times.to_vec(),
    }))
}

impl Objective for Dsno {
    fn per_output(&self, out: &Tensor, batch: &Batch) -> Result<Tensor> {
        Ok(self.distance.per_output(out, &batch.targets))
    }

    fn weights(&self) -> &Tensor {
        &self.weights
    }

    fn columns(&self) -> Vec<String> {
        self.times.iter().map(|t| format!("loss_t{t}")).collect()
    }
}
