//! A small MLP in candle-nn from a query embedding to one predicted score per
//! model, trained with AdamW on every model's score (binary cross-entropy on
//! scores in [0, 1]) — not on a single "best model" label, which collapses
//! when many models tie.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Linear, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

/// MLP shape and training settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpParams {
    /// Width of the hidden layer.
    pub hidden: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Most passes over the training data.
    pub max_epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    /// Seed of the initial weights and the batch order.
    pub seed: u64,
}

impl Default for MlpParams {
    fn default() -> Self {
        Self {
            hidden: 256,
            learning_rate: 1e-3,
            weight_decay: 1e-2,
            max_epochs: 200,
            batch_size: 64,
            patience: 15,
            seed: 7,
        }
    }
}

/// What training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Epochs run.
    pub epochs: usize,
    /// The epoch whose weights were kept (best validation loss).
    pub best_epoch: usize,
    /// Its validation loss.
    pub best_val_loss: f64,
    /// Training loss of the last epoch.
    pub last_train_loss: f64,
}

/// A copy of every weight, by variable name.
type Weights = Vec<(String, Tensor)>;

/// One finished training epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Epoch {
    /// Its number, from 1.
    pub epoch: usize,
    /// Mean training loss over its batches.
    pub train_loss: f64,
    /// Loss on the validation rows after it.
    pub val_loss: f64,
}

/// A trained (or loaded) MLP.
pub struct Mlp {
    l1: Linear,
    l2: Linear,
    varmap: VarMap,
    dims: usize,
    hidden: usize,
    models: usize,
}

impl std::fmt::Debug for Mlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mlp")
            .field("dims", &self.dims)
            .field("models", &self.models)
            .finish()
    }
}

fn uniform(rng: &mut fastrand::Rng, shape: (usize, usize), bound: f32) -> Result<Tensor, candle_core::Error> {
    let data: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| (rng.f32() * 2.0 - 1.0) * bound)
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

fn matrix(rows: &[&[f32]], width: usize) -> Result<Tensor, candle_core::Error> {
    let data: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(data, (rows.len(), width), &Device::Cpu)
}

impl Mlp {
    /// Builds the layers over `varmap`, creating seeded weights where missing.
    fn build(varmap: VarMap, dims: usize, hidden: usize, models: usize, seed: u64) -> Result<Self, candle_core::Error> {
        {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut vars = varmap
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
            let b1 = 1.0 / (dims as f32).sqrt();
            let b2 = 1.0 / (hidden as f32).sqrt();
            for (name, shape, bound) in [
                ("l1.weight", (hidden, dims), b1),
                ("l1.bias", (1, hidden), b1),
                ("l2.weight", (models, hidden), b2),
                ("l2.bias", (1, models), b2),
            ] {
                if !vars.contains_key(name) {
                    let t = uniform(&mut rng, shape, bound)?;
                    let t = if shape.0 == 1 { t.squeeze(0)? } else { t };
                    vars.insert(name.to_owned(), Var::from_tensor(&t)?);
                }
            }
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let l1 = candle_nn::linear(dims, hidden, vb.pp("l1"))?;
        let l2 = candle_nn::linear(hidden, models, vb.pp("l2"))?;
        Ok(Self {
            l1,
            l2,
            varmap,
            dims,
            hidden,
            models,
        })
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor, candle_core::Error> {
        self.l2.forward(&self.l1.forward(x)?.relu()?)
    }

    /// Trains on `x[i]` (embeddings) → `y[i]` (per-model scores in [0, 1]),
    /// keeping the weights of the epoch with the best loss on the validation rows.
    pub fn train(
        x: &[Vec<f32>],
        y: &[Vec<f32>],
        train: &[usize],
        val: &[usize],
        params: &MlpParams,
    ) -> Result<(Self, TrainReport), candle_core::Error> {
        Self::train_with(x, y, train, val, params, &mut |_| {})
    }

    /// [`Mlp::train`], calling `on_epoch` after every epoch (for progress reports).
    pub fn train_with(
        x: &[Vec<f32>],
        y: &[Vec<f32>],
        train: &[usize],
        val: &[usize],
        params: &MlpParams,
        on_epoch: &mut dyn FnMut(&Epoch),
    ) -> Result<(Self, TrainReport), candle_core::Error> {
        let dims = x.first().map_or(0, Vec::len);
        let models = y.first().map_or(0, Vec::len);
        let mlp = Self::build(VarMap::new(), dims, params.hidden, models, params.seed)?;
        let mut opt = AdamW::new(
            mlp.varmap.all_vars(),
            ParamsAdamW {
                lr: params.learning_rate,
                weight_decay: params.weight_decay,
                ..ParamsAdamW::default()
            },
        )?;
        let rows = |idx: &[usize], m: &[Vec<f32>], w: usize| {
            matrix(&idx.iter().map(|&i| m[i].as_slice()).collect::<Vec<_>>(), w)
        };
        let val = if val.is_empty() { train } else { val };
        let (vx, vy) = (rows(val, x, dims)?, rows(val, y, models)?);
        let mut rng = fastrand::Rng::with_seed(params.seed ^ 0x5eed);
        let mut order = train.to_vec();
        let mut best: Option<(f64, usize, Weights)> = None;
        let mut report = TrainReport {
            epochs: 0,
            best_epoch: 0,
            best_val_loss: f64::INFINITY,
            last_train_loss: f64::NAN,
        };
        for epoch in 1..=params.max_epochs {
            rng.shuffle(&mut order);
            let mut total = 0.0;
            let mut batches = 0usize;
            for batch in order.chunks(params.batch_size.max(1)) {
                let (bx, by) = (rows(batch, x, dims)?, rows(batch, y, models)?);
                let loss = bce_with_logits(&mlp.logits(&bx)?, &by)?;
                opt.backward_step(&loss)?;
                total += f64::from(loss.to_scalar::<f32>()?);
                batches += 1;
            }
            report.epochs = epoch;
            report.last_train_loss = total / batches.max(1) as f64;
            let val_loss = f64::from(bce_with_logits(&mlp.logits(&vx)?, &vy)?.to_scalar::<f32>()?);
            on_epoch(&Epoch {
                epoch,
                train_loss: report.last_train_loss,
                val_loss,
            });
            // A loss that is not a number is never the best.
            if val_loss.is_finite() && best.as_ref().is_none_or(|(l, ..)| val_loss < *l) {
                let snapshot = mlp.snapshot()?;
                best = Some((val_loss, epoch, snapshot));
            } else if best.as_ref().is_some_and(|(_, e, _)| epoch - e >= params.patience) {
                break;
            }
        }
        if let Some((loss, epoch, weights)) = best {
            mlp.restore(&weights)?;
            report.best_epoch = epoch;
            report.best_val_loss = loss;
        }
        Ok((mlp, report))
    }

    fn snapshot(&self) -> Result<Weights, candle_core::Error> {
        let vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        vars.iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    fn restore(&self, weights: &[(String, Tensor)]) -> Result<(), candle_core::Error> {
        let vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        for (k, t) in weights {
            if let Some(v) = vars.get(k) {
                v.set(t)?;
            }
        }
        Ok(())
    }

    /// Predicted score of each model (a probability in [0, 1]) for one embedding.
    pub fn predict(&self, embedding: &[f32]) -> Result<Vec<f32>, candle_core::Error> {
        let x = Tensor::from_slice(embedding, (1, embedding.len()), &Device::Cpu)?;
        candle_nn::ops::sigmoid(&self.logits(&x)?)?.squeeze(0)?.to_vec1::<f32>()
    }

    /// Predicted scores for many embeddings at once.
    pub fn predict_many(&self, embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, candle_core::Error> {
        let x = matrix(&embeddings.iter().map(Vec::as_slice).collect::<Vec<_>>(), self.dims)?;
        candle_nn::ops::sigmoid(&self.logits(&x)?)?.to_vec2::<f32>()
    }

    /// Writes the weights as safetensors.
    pub fn save(&self, path: &Path) -> Result<(), candle_core::Error> {
        self.varmap.save(path)
    }

    /// Reads weights written by [`Mlp::save`].
    pub fn load(path: &Path, dims: usize, hidden: usize, models: usize) -> Result<Self, candle_core::Error> {
        Self::from_buffer(&std::fs::read(path)?, dims, hidden, models)
    }

    /// Reads weights written by [`Mlp::save`] from the file's bytes.
    pub fn from_buffer(bytes: &[u8], dims: usize, hidden: usize, models: usize) -> Result<Self, candle_core::Error> {
        // Create the variables with the right shapes, then overwrite them from the file.
        let varmap = VarMap::new();
        let mlp = Self::build(varmap.clone(), dims, hidden, models, 0)?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?;
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        for (name, var) in vars.iter() {
            let tensor = tensors
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("the weights lack `{name}`")))?;
            var.set(tensor)?;
        }
        drop(vars);
        Ok(mlp)
    }

    /// Input width.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Width of the hidden layer.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Output width: one score per candidate model.
    pub fn models(&self) -> usize {
        self.models
    }

    /// Bytes of its weights as `f32`.
    pub fn weight_bytes(&self) -> u64 {
        let (d, h, m) = (self.dims as u64, self.hidden as u64, self.models as u64);
        4u64.saturating_mul(d.saturating_mul(h) + h + m.saturating_mul(h) + m)
    }

    /// Whether every weight is a finite number (a NaN would make every
    /// prediction NaN).
    pub fn is_finite(&self) -> Result<bool, candle_core::Error> {
        for var in self.varmap.all_vars() {
            let values = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            if values.iter().any(|v| !v.is_finite()) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Mean binary cross-entropy of `logits` against `targets` in [0, 1], in
/// the form that stays finite for any logit: `max(z, 0) − z·y + ln(1 + e^−|z|)`
/// (computing `sigmoid` first rounds it to exactly 1 past z ≈ 17 in f32, and
/// its logarithm then makes the loss, and every weight after the step, NaN).
fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor, candle_core::Error> {
    let softplus = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    ((logits.relu()? - (logits * targets)?)? + softplus)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_stays_finite_for_any_logit_and_matches_the_plain_form() {
        let device = Device::Cpu;
        let logits = Tensor::new(&[[40.0f32, -40.0, 0.5, -2.0]], &device).unwrap();
        let targets = Tensor::new(&[[0.0f32, 1.0, 1.0, 0.3]], &device).unwrap();
        let loss = bce_with_logits(&logits, &targets).unwrap().to_scalar::<f32>().unwrap();
        assert!(loss.is_finite(), "{loss}");
        // Where the plain form is finite, the two agree.
        let (z, y) = ([0.5f32, -2.0], [1.0f32, 0.3]);
        let plain: f32 = z
            .iter()
            .zip(y)
            .map(|(z, y)| {
                let p = 1.0 / (1.0 + (-z).exp());
                -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
            })
            .sum::<f32>()
            / 2.0;
        let stable = bce_with_logits(
            &Tensor::new(&[z], &device).unwrap(),
            &Tensor::new(&[y], &device).unwrap(),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!((plain - stable).abs() < 1e-5, "{plain} vs {stable}");
        // 40 and -40, wrong by 40 each, cost about 40 each.
        assert!(loss > 19.0 && loss < 21.0, "{loss}");
    }

    #[test]
    fn learns_per_model_scores_and_survives_a_round_trip() {
        // Model 0 answers queries with x0 > 0, model 1 the others; model 2 never.
        let mut rng = fastrand::Rng::with_seed(3);
        let x: Vec<Vec<f32>> = (0..400)
            .map(|_| (0..8).map(|_| rng.f32() * 2.0 - 1.0).collect())
            .collect();
        let y: Vec<Vec<f32>> = x
            .iter()
            .map(|v| {
                if v[0] > 0.0 {
                    vec![1.0, 0.0, 0.0]
                } else {
                    vec![0.0, 1.0, 0.0]
                }
            })
            .collect();
        let train: Vec<usize> = (0..320).collect();
        let val: Vec<usize> = (320..400).collect();
        let params = MlpParams {
            hidden: 32,
            learning_rate: 1e-2,
            max_epochs: 60,
            ..MlpParams::default()
        };
        let (mlp, report) = Mlp::train(&x, &y, &train, &val, &params).unwrap();
        assert!(report.best_val_loss < 0.2, "{report:?}");
        let right = val
            .iter()
            .filter(|&&i| {
                let p = mlp.predict(&x[i]).unwrap();
                (p[0] > p[1]) == (x[i][0] > 0.0) && p[2] < 0.2
            })
            .count();
        assert!(right >= 72, "{right}/80 right");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlp.safetensors");
        mlp.save(&path).unwrap();
        let loaded = Mlp::load(&path, 8, 32, 3).unwrap();
        assert_eq!(loaded.predict(&x[0]).unwrap(), mlp.predict(&x[0]).unwrap());
    }
}
