//! The weight EMA (exponential moving average), evaluated beside the raw weights: one rule for
//! both step paths. After every optimizer step, `ema = d · ema + (1 - d) · weights` over every
//! parameter and BatchNorm running statistic (torchvision's `use_buffers=True`), with
//! `d = min(decay, (1 + t) / (10 + t))` at update `t` when warmed up.
//!
//! On burn the EMA is a model updated with tensor ops ([`Ema::update`]); on the CPU trainer it is
//! a host copy updated with [`blend`] and written into the model at the end of each epoch
//! ([`Ema::set_model`]). Both compute `ema · d + weights · (1 - d)` in f32 with the two factors
//! rounded to f32, so the two paths give the same bits from the same weights.

use burn::module::Module;

use crate::io::params;
use crate::models::MobileNet;
use crate::training::config::TrainConfig;

/// A run's EMA: its model (plain device, eval mode) and how many updates it has had.
pub struct Ema {
    pub model: Option<MobileNet>,
    decay: f64,
    warmup: bool,
    pub updates: u64,
}

impl Ema {
    /// The run's EMA (when it has one): `stored` from a checkpoint, or a copy of `model`.
    pub fn new(config: &TrainConfig, stored: Option<MobileNet>, model: &MobileNet, updates: u64) -> Option<Self> {
        config.ema_decay.map(|decay| Ema {
            model: Some(stored.unwrap_or_else(|| model.valid().eval_mode())),
            decay,
            warmup: config.ema_warmup,
            updates,
        })
    }

    /// Counts one update and returns its decay.
    pub fn next_decay(&mut self) -> f64 {
        self.updates += 1;
        let t = self.updates as f64;
        if self.warmup {
            self.decay.min((1.0 + t) / (10.0 + t))
        } else {
            self.decay
        }
    }

    /// One update from `model`'s current weights (burn).
    pub fn update(&mut self, model: &MobileNet) {
        let d = self.next_decay();
        let (keep, take) = factors(d);
        let current = params::collect(model);
        let ema = self.model.take().expect("ema model");
        self.model = Some(params::map(ema, |path, flat| {
            current.get(path).map(|c| flat.value.clone().mul_scalar(keep) + c.value.clone().mul_scalar(take))
        }));
    }

    /// Replaces the EMA's weights (after an epoch on the CPU trainer, which kept a host copy).
    pub fn set_model(&mut self, model: MobileNet) {
        self.model = Some(model);
    }
}

/// The two factors of an update with decay `d`, as f32 (what both paths multiply by).
fn factors(d: f64) -> (f32, f32) {
    (d as f32, (1.0 - d) as f32)
}

/// One update of a host copy: `ema = ema · d + current · (1 - d)`.
pub fn blend(ema: &mut [f32], current: &[f32], d: f64) {
    let (keep, take) = factors(d);
    for (e, &c) in ema.iter_mut().zip(current) {
        *e = *e * keep + c * take;
    }
}
