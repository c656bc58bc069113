//! Stopping a render early the way A1111's `/interrupt` and `/skip` do: the flags are polled at
//! the start of every denoiser call (A1111's `CFGDenoiser.forward` raises
//! `InterruptedException` there), and the sampler's result is replaced by the latent A1111
//! returns then — `last_latent`, the conditional (positive-prompt) denoised prediction of the
//! last denoiser call, or the initial latent when no call was made (A1111's
//! `self.last_latent = x`). That latent is decoded like a finished one. `interrupt` ends the
//! whole job after the current image; `skip` ends only the current image (and is cleared).
//! `cancel` is different: it fails the job with [`PipelineError::Cancelled`].

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;

use crate::sampling::Denoiser;
use crate::{PipelineError, Result};

/// The flags a running render polls.
#[derive(Debug, Clone, Copy)]
pub struct RenderControl<'a> {
    /// Fails the render with [`PipelineError::Cancelled`] at the next step boundary.
    pub cancel: &'a AtomicBool,
    /// Ends the render at the next denoiser call; the current image is the decoded
    /// `last_latent`, later images of the batch are not made.
    pub interrupt: Option<&'a AtomicBool>,
    /// Ends the current image at the next denoiser call (decoded `last_latent`); the flag is
    /// cleared and the batch goes on.
    pub skip: Option<&'a AtomicBool>,
}

impl<'a> From<&'a AtomicBool> for RenderControl<'a> {
    fn from(cancel: &'a AtomicBool) -> Self {
        Self {
            cancel,
            interrupt: None,
            skip: None,
        }
    }
}

impl RenderControl<'_> {
    fn interrupted(&self) -> bool {
        self.interrupt.is_some_and(|f| f.load(Ordering::SeqCst))
    }

    fn skipped(&self) -> bool {
        self.skip.is_some_and(|f| f.load(Ordering::SeqCst))
    }
}

/// A denoiser that can tell the conditional part of its last prediction (A1111 keeps the
/// positive prompt's denoised latent, not the CFG mix, as `last_latent`).
pub trait CondDenoiser: Denoiser {
    /// The positive prompt's denoised prediction of the last call, when it differs from the
    /// returned value (CFG); `None` when the returned value is it.
    fn last_cond(&self) -> Option<Tensor>;
}

/// Wraps a denoiser for one image: polls the flags and remembers `last_latent`.
pub struct Watched<'d, D: CondDenoiser> {
    inner: &'d mut D,
    control: RenderControl<'d>,
    last_latent: Tensor,
}

impl<'d, D: CondDenoiser> Watched<'d, D> {
    /// Starts watching one image whose initial latent is `x`.
    pub fn new(inner: &'d mut D, control: RenderControl<'d>, x: &Tensor) -> Self {
        Self {
            inner,
            control,
            last_latent: x.clone(),
        }
    }

    /// Turns the sampler's result into the latent to decode and whether the batch goes on:
    /// an interruption becomes `last_latent` (clearing a `skip`); other errors pass through.
    pub fn finish(self, sampled: Result<Tensor>) -> Result<(Tensor, Flow)> {
        match sampled {
            Err(PipelineError::Interrupted) => {
                if self.control.interrupted() {
                    Ok((self.last_latent, Flow::Stop))
                } else {
                    if let Some(skip) = self.control.skip {
                        skip.store(false, Ordering::SeqCst);
                    }
                    Ok((self.last_latent, Flow::Continue))
                }
            }
            Ok(latent) if self.control.interrupted() => Ok((latent, Flow::Stop)),
            Ok(latent) => Ok((latent, Flow::Continue)),
            Err(e) => Err(e),
        }
    }
}

/// Whether a batch goes on after an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Render the next image.
    Continue,
    /// `/interrupt`: no further images.
    Stop,
}

impl<D: CondDenoiser> Denoiser for Watched<'_, D> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if self.control.interrupted() || self.control.skipped() {
            return Err(PipelineError::Interrupted);
        }
        let denoised = self.inner.denoise(x, sigma)?;
        self.last_latent = self.inner.last_cond().unwrap_or_else(|| denoised.clone());
        Ok(denoised)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// D(x) = x·0.5 with a "conditional" part x·0.25.
    struct Halver {
        cond: Option<Tensor>,
    }

    impl Denoiser for Halver {
        fn denoise(&mut self, x: &Tensor, _sigma: f64) -> Result<Tensor> {
            self.cond = Some(x.affine(0.25, 0.0)?);
            Ok(x.affine(0.5, 0.0)?)
        }
    }

    impl CondDenoiser for Halver {
        fn last_cond(&self) -> Option<Tensor> {
            self.cond.clone()
        }
    }

    fn run(calls_before_flag: usize, skip: bool) -> (Vec<f32>, Flow, bool) {
        let (cancel, interrupt, skip_flag) = (
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
        );
        let control = RenderControl {
            cancel: &cancel,
            interrupt: Some(&interrupt),
            skip: Some(&skip_flag),
        };
        let mut inner = Halver { cond: None };
        let x = Tensor::new(&[8f32], &Device::Cpu).unwrap();
        let mut w = Watched::new(&mut inner, control, &x);
        let mut cur = x.clone();
        let mut result = Ok(cur.clone());
        for i in 0..3 {
            if i == calls_before_flag {
                if skip {
                    skip_flag.store(true, Ordering::SeqCst);
                } else {
                    interrupt.store(true, Ordering::SeqCst);
                }
            }
            match w.denoise(&cur, 1.0) {
                Ok(d) => {
                    cur = d;
                    result = Ok(cur.clone());
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let (latent, flow) = w.finish(result).unwrap();
        (
            latent.to_vec1::<f32>().unwrap(),
            flow,
            skip_flag.load(Ordering::SeqCst),
        )
    }

    #[test]
    fn interrupt_returns_the_last_conditional_prediction() {
        // Calls: 8 → 4 (cond 2) → 2 (cond 1); interrupted before the third call.
        assert_eq!(run(2, false), (vec![1.0], Flow::Stop, false));
        // Before any call: the initial latent.
        assert_eq!(run(0, false), (vec![8.0], Flow::Stop, false));
    }

    #[test]
    fn skip_ends_the_image_and_clears_itself() {
        assert_eq!(run(1, true), (vec![2.0], Flow::Continue, false));
    }
}
