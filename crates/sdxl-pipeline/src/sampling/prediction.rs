//! Model-output wrappers (k-diffusion `external.py`): what the glue needs to turn a UNet into a
//! [`super::Denoiser`]. The UNet sees `x · c_in(σ)` at timestep `t(σ)`
//! ([`super::ModelSchedule::sigma_to_t`]); its output becomes D with [`denoised_from_output`].

use candle_core::Tensor;

use crate::Result;

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prediction {
    /// ε-prediction (SDXL base and most checkpoints).
    #[default]
    Epsilon,
    /// v-prediction (σ_data = 1).
    V,
}

/// Input scaling of VE latents for the UNet: 1/√(σ²+1).
pub fn c_in(sigma: f64) -> f64 {
    1.0 / (sigma * sigma + 1.0).sqrt()
}

/// D from the model output: ε: D = x − σ·ε̂; v: D = x/(σ²+1) − σ·v̂/√(σ²+1).
pub fn denoised_from_output(
    x: &Tensor,
    model_output: &Tensor,
    sigma: f64,
    prediction: Prediction,
) -> Result<Tensor> {
    let out = model_output.to_dtype(x.dtype())?;
    let d = match prediction {
        Prediction::Epsilon => (x - out.affine(sigma, 0.0)?)?,
        Prediction::V => {
            let s2 = sigma * sigma + 1.0;
            (x.affine(1.0 / s2, 0.0)? - out.affine(sigma / s2.sqrt(), 0.0)?)?
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn v_and_eps_agree_on_the_exact_toy_model() {
        // Data x0 = 0.3, noise n = 1.2, σ = 2: VE x = x0 + σ·n. A perfect model outputs ε = n, or
        // v = α·n − σ_vp·x0 with α = 1/√(σ²+1), σ_vp = σ·α (VP coordinates); both must give D = x0.
        let (x0, n, s) = (0.3f64, 1.2f64, 2.0f64);
        let x = x0 + s * n;
        let alpha = 1.0 / (s * s + 1.0).sqrt();
        let sig_vp = s * alpha;
        let v = alpha * n - sig_vp * x0;
        let dev = Device::Cpu;
        let xt = Tensor::new(&[x], &dev).unwrap();
        let de = denoised_from_output(
            &xt,
            &Tensor::new(&[n], &dev).unwrap(),
            s,
            Prediction::Epsilon,
        )
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
        let dv = denoised_from_output(&xt, &Tensor::new(&[v], &dev).unwrap(), s, Prediction::V)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!((de[0] - x0).abs() < 1e-12);
        assert!((dv[0] - x0).abs() < 1e-12);
        assert!((c_in(s) - alpha).abs() < 1e-15);
    }
}
