//! Knowledge distillation (Luhman & Luhman 2021): the teacher's backbone without TimeConv, one
//! output at the last output time, regressing the final target only — the same data, budget and
//! initialisation as DSNO, so the comparison isolates what the trajectory and the temporal
//! layers buy.
use super::{Architecture, Batch, Context, Distance, Method, Needs, Objective, Spec};
use crate::Result;
use tch::{Kind, Tensor};

pub const SPEC: Spec = Spec {
    method: Method::KD,
    summary: "knowledge distillation: the bare backbone, x_T → the sample (Luhman & Luhman 2021)",
    architecture: Architecture::Backbone,
    needs: Needs {
        trajectories: true,
        teacher: false,
    },
    build,
};

struct Kd {
    distance: Distance,
    weights: Tensor,
    /// The last output time, the sample's.
    last: f64,
}

fn build(c: &Context) -> Result<Box<dyn Objective>> {
    Ok(Box::new(Kd {
        distance: Distance::new(c)?,
        weights: Tensor::ones([1], (Kind::Float, c.device)),
        last: c.times[c.times.len() - 1],
    }))
}

impl Objective for Kd {
    fn per_output(&self, out: &Tensor, batch: &Batch) -> Result<Tensor> {
        let m = batch.targets.size()[1];
        Ok(self
            .distance
            .per_output(out, &batch.targets.narrow(1, m - 1, 1)))
    }

    fn weights(&self) -> &Tensor {
        &self.weights
    }

    fn columns(&self) -> Vec<String> {
        vec![format!("loss_t{}", self.last)]
    }
}
