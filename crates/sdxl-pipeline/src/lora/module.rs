//! Grouping the keys of a LoRA file into modules (one per target weight) and turning each module
//! into its weight delta with the formula of its family (LoRA/LoCon, LoHa, LoKr, DoRA).

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

use super::math;

/// Key suffix → role inside a module, longest suffixes first so `.lora_down.weight` is never
/// taken for the old-diffusers `.down.weight`.
const SUFFIXES: [(&str, &str); 24] = [
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_mid.weight", "mid"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".down.weight", "down"),
    (".up.weight", "up"),
    (".dora_scale", "dora_scale"),
    (".alpha", "alpha"),
    (".scale", "scale"),
    (".hada_w1_a", "hada_w1_a"),
    (".hada_w1_b", "hada_w1_b"),
    (".hada_w2_a", "hada_w2_a"),
    (".hada_w2_b", "hada_w2_b"),
    (".hada_t1", "hada_t1"),
    (".hada_t2", "hada_t2"),
    (".lokr_w1_a", "lokr_w1_a"),
    (".lokr_w1_b", "lokr_w1_b"),
    (".lokr_w2_a", "lokr_w2_a"),
    (".lokr_w2_b", "lokr_w2_b"),
    (".lokr_w1", "lokr_w1"),
    (".lokr_w2", "lokr_w2"),
    (".lokr_t2", "lokr_t2"),
    (".lokr_t1", "lokr_t1"),
];

/// The tensors of one LoRA module, by role, with the file keys they came from.
#[derive(Default)]
pub(crate) struct Module {
    pub parts: HashMap<&'static str, (String, Tensor)>,
}

/// Splits `tensors` into modules (`module name → Module`) and keys with no known suffix.
pub(crate) fn group(tensors: &BTreeMap<String, Tensor>) -> (BTreeMap<String, Module>, Vec<String>) {
    let mut modules: BTreeMap<String, Module> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (key, t) in tensors {
        let hit = SUFFIXES
            .iter()
            .find_map(|(sfx, role)| key.strip_suffix(sfx).map(|m| (m, *role)));
        match hit {
            Some((module, role)) if !module.is_empty() => {
                modules
                    .entry(module.to_string())
                    .or_default()
                    .parts
                    .insert(role, (key.clone(), t.clone()));
            }
            _ => unknown.push(key.clone()),
        }
    }
    (modules, unknown)
}

/// Why a module could not be turned into a delta.
pub(crate) enum ModuleError {
    /// The module's tensors do not form any supported family (e.g. `up` without `down`).
    Malformed(String),
    /// A tensor operation failed (incompatible factor shapes).
    Shapes(String),
}

impl From<candle_core::Error> for ModuleError {
    fn from(e: candle_core::Error) -> Self {
        Self::Shapes(e.to_string())
    }
}

impl Module {
    fn get(&self, role: &str) -> Option<&Tensor> {
        self.parts.get(role).map(|(_, t)| t)
    }

    /// Keys of this module that the family formula did not use.
    pub fn unused_keys(&self, used: &[&str]) -> Vec<String> {
        self.parts
            .iter()
            .filter(|(role, _)| !used.contains(role))
            .map(|(_, (k, _))| k.clone())
            .collect()
    }

    /// A scalar part (`alpha`, `scale`): exactly one element, else malformed.
    fn scalar(&self, role: &str) -> Result<Option<f64>, ModuleError> {
        let Some((key, t)) = self.parts.get(role) else {
            return Ok(None);
        };
        if t.elem_count() != 1 {
            return Err(ModuleError::Malformed(format!(
                "`{key}` must be a scalar, has shape {:?}",
                t.dims()
            )));
        }
        Ok(Some(
            t.flatten_all()?
                .to_vec1::<f32>()?
                .first()
                .copied()
                .unwrap_or(0.0) as f64,
        ))
    }

    /// A plain LoRA/LoCon without `lora_mid`: `(up [out,r], down [r, in·kh·kw], roles used)`,
    /// validated (`up` must be `[out,r]` or `[out,r,1,1]`, ranks equal); `None` for other families.
    #[allow(clippy::type_complexity)]
    pub fn low_rank(&self) -> Result<Option<(Tensor, Tensor, Vec<&'static str>)>, ModuleError> {
        let (Some(up), Some(down)) = (self.get("up"), self.get("down")) else {
            return Ok(None);
        };
        if self.get("mid").is_some() {
            return Ok(None);
        }
        let r = down.dim(0)?;
        let out = up.dim(0)?;
        if up.rank() < 2 || up.dim(1)? != r || up.elem_count() != out * r {
            return Err(ModuleError::Shapes(format!(
                "up {:?} and down {:?} do not share a rank",
                up.dims(),
                down.dims()
            )));
        }
        let up2 = up.reshape((out, r))?;
        let down2 = down.reshape((r, ()))?;
        Ok(Some((up2, down2, vec!["up", "down", "alpha", "scale"])))
    }

    /// The shape [`Self::updown`] would produce, computed from the factor shapes alone (no
    /// tensor is touched), and the elements it would allocate on the way (the result included),
    /// so a file whose factors multiply out to something huge is refused before any product.
    pub fn planned(&self) -> Result<Planned, ModuleError> {
        let dims = |role: &str| self.get(role).map(|t| t.dims().to_vec());
        if self.get("up").is_some() || self.get("down").is_some() {
            let missing = |what: &str| {
                ModuleError::Malformed(format!("module has {what} but not its partner"))
            };
            let up = dims("up").ok_or_else(|| missing("a down weight"))?;
            let down = dims("down").ok_or_else(|| missing("an up weight"))?;
            let out = dim(&up, 0)?;
            let down_rest = elems(down.get(1..).unwrap_or_default())?;
            return match dims("mid") {
                Some(mid) => {
                    let up_r = dim(&up, 1)?;
                    if elems(&up)? != mul(out, up_r)? {
                        return Err(shapes("up", &up, "a [out, rank, 1, 1] factor"));
                    }
                    cp_plan(&[out, up_r], &mid, &[dim(&down, 0)?, down_rest])
                }
                None => {
                    let r = dim(&down, 0)?;
                    if elems(&up)? != mul(out, r)? {
                        return Err(ModuleError::Shapes(format!(
                            "up {up:?} and down {down:?} do not share a rank"
                        )));
                    }
                    let mut shape = down.clone();
                    shape[0] = out;
                    Planned::new(shape, 0)
                }
            };
        }
        if self.parts.keys().any(|r| r.starts_with("hada_")) {
            let need = |r: &str| {
                dims(r).ok_or_else(|| ModuleError::Malformed(format!("LoHa module lacks `{r}`")))
            };
            let f1 = loha_plan(&need("hada_w1_a")?, &need("hada_w1_b")?, dims("hada_t1"))?;
            let f2 = loha_plan(&need("hada_w2_a")?, &need("hada_w2_b")?, dims("hada_t2"))?;
            if f1.shape != f2.shape {
                return Err(ModuleError::Shapes(format!(
                    "LoHa factors multiply out to {:?} and {:?}, which differ",
                    f1.shape, f2.shape
                )));
            }
            let extra = f1.total.checked_add(f2.total).ok_or_else(overflow)?;
            return Planned::new(f1.shape, extra);
        }
        if self.parts.keys().any(|r| r.starts_with("lokr_")) {
            let pair = |a: &str, b: &str| -> Result<Option<Planned>, ModuleError> {
                match (dims(a), dims(b)) {
                    (Some(a), Some(b)) => Ok(Some(matmul_plan(&a, &b)?)),
                    _ => Ok(None),
                }
            };
            let w1 = match dims("lokr_w1") {
                Some(w) => Planned::new(w, 0)?,
                None => pair("lokr_w1_a", "lokr_w1_b")?
                    .ok_or_else(|| ModuleError::Malformed("LoKr module lacks w1".into()))?,
            };
            let w2 = match (dims("lokr_w2"), dims("lokr_t2")) {
                (Some(w), _) => Planned::new(w, 0)?,
                (None, Some(t2)) => match (dims("lokr_w2_a"), dims("lokr_w2_b")) {
                    (Some(a), Some(b)) if a.len() == 2 => cp_plan(&[a[1], a[0]], &t2, &b)?,
                    (Some(a), Some(_)) => return Err(shapes("lokr_w2_a", &a, "a matrix")),
                    _ => return Err(ModuleError::Malformed("LoKr module lacks w2_a/w2_b".into())),
                },
                (None, None) => pair("lokr_w2_a", "lokr_w2_b")?
                    .ok_or_else(|| ModuleError::Malformed("LoKr module lacks w2".into()))?,
            };
            let (a, b) = (&w1.shape, &w2.shape);
            let (p, q) = (dim(a, 0)?, dim(a, 1)?);
            if elems(a)? != mul(p, q)? {
                return Err(shapes("lokr_w1", a, "a [p, q] or [p, q, 1, 1] factor"));
            }
            let (m, n) = (dim(b, 0)?, dim(b, 1)?);
            let mut shape = vec![mul(p, m)?, mul(q, n)?];
            shape.extend(b.iter().skip(2).copied());
            let extra = w1.total.checked_add(w2.total).ok_or_else(overflow)?;
            return Planned::new(shape, extra);
        }
        Err(ModuleError::Malformed(
            "no up/down, LoHa or LoKr weights (unsupported module type)".into(),
        ))
    }

    /// The un-scaled delta, its rank (for `alpha/rank`; `None` ⇒ scale 1) and the roles used.
    pub fn updown(&self) -> Result<(Tensor, Option<usize>, Vec<&'static str>), ModuleError> {
        let missing =
            |what: &str| ModuleError::Malformed(format!("module has {what} but not its partner"));
        if self.get("up").is_some() || self.get("down").is_some() {
            let up = self.get("up").ok_or_else(|| missing("a down weight"))?;
            let down = self.get("down").ok_or_else(|| missing("an up weight"))?;
            let rank = down.dim(0)?;
            let used = vec!["up", "down", "mid", "alpha", "scale", "dora_scale"];
            let delta = match self.get("mid") {
                Some(mid) => math::lora_cp(up, mid, down)?,
                None => math::lora_updown(up, down)?,
            };
            return Ok((delta, Some(rank), used));
        }
        if self.parts.keys().any(|r| r.starts_with("hada_")) {
            let need = |r: &str| {
                self.get(r)
                    .ok_or_else(|| ModuleError::Malformed(format!("LoHa module lacks `{r}`")))
            };
            let (w1a, w1b, w2a, w2b) = (
                need("hada_w1_a")?,
                need("hada_w1_b")?,
                need("hada_w2_a")?,
                need("hada_w2_b")?,
            );
            let f1 = math::loha_factor(w1a, w1b, self.get("hada_t1"))?;
            let f2 = math::loha_factor(w2a, w2b, self.get("hada_t2"))?;
            let used = vec![
                "hada_w1_a",
                "hada_w1_b",
                "hada_w2_a",
                "hada_w2_b",
                "hada_t1",
                "hada_t2",
                "alpha",
                "scale",
                "dora_scale",
            ];
            return Ok(((f1 * f2)?, Some(w1b.dim(0)?), used));
        }
        if self.parts.keys().any(|r| r.starts_with("lokr_")) {
            let pair = |a: &str, b: &str| -> Result<Option<Tensor>, ModuleError> {
                Ok(match (self.get(a), self.get(b)) {
                    (Some(a), Some(b)) => Some(a.matmul(b)?),
                    _ => None,
                })
            };
            let w1 = match self.get("lokr_w1") {
                Some(w) => w.clone(),
                None => pair("lokr_w1_a", "lokr_w1_b")?
                    .ok_or_else(|| ModuleError::Malformed("LoKr module lacks w1".into()))?,
            };
            let w2 = match (self.get("lokr_w2"), self.get("lokr_t2")) {
                (Some(w), _) => w.clone(),
                (None, Some(t2)) => {
                    let (a, b) = match (self.get("lokr_w2_a"), self.get("lokr_w2_b")) {
                        (Some(a), Some(b)) => (a, b),
                        _ => {
                            return Err(ModuleError::Malformed(
                                "LoKr module lacks w2_a/w2_b".into(),
                            ))
                        }
                    };
                    math::cp_rebuild(&a.t()?.contiguous()?, t2, b)?
                }
                (None, None) => pair("lokr_w2_a", "lokr_w2_b")?
                    .ok_or_else(|| ModuleError::Malformed("LoKr module lacks w2".into()))?,
            };
            let rank = match (self.get("lokr_w1_b"), self.get("lokr_w2_b")) {
                (Some(b), _) | (None, Some(b)) => Some(b.dim(0)?),
                _ => None,
            };
            let used = vec![
                "lokr_w1",
                "lokr_w1_a",
                "lokr_w1_b",
                "lokr_w2",
                "lokr_w2_a",
                "lokr_w2_b",
                "lokr_t2",
                "alpha",
                "scale",
                "dora_scale",
            ];
            return Ok((math::kron(&w1, &w2)?, rank, used));
        }
        Err(ModuleError::Malformed(
            "no up/down, LoHa or LoKr weights (unsupported module type)".into(),
        ))
    }

    /// `alpha/rank` (A1111 `calc_scale`): an explicit `scale` wins; no alpha or no rank ⇒ 1.
    pub fn scale(
        &self,
        rank: Option<usize>,
        default_alpha: Option<f64>,
    ) -> Result<f64, ModuleError> {
        if let Some(s) = self.scalar("scale")? {
            return Ok(s);
        }
        let alpha = self.scalar("alpha")?.or(default_alpha);
        Ok(match (alpha, rank) {
            (Some(a), Some(r)) if r > 0 => a / r as f64,
            _ => 1.0,
        })
    }

    /// The DoRA magnitude, if the module has one.
    pub fn dora_scale(&self) -> Option<&Tensor> {
        self.get("dora_scale")
    }
}

/// What forming a module's delta will produce and allocate, known before anything is computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    /// The delta's shape.
    pub shape: Vec<usize>,
    /// Elements of the delta.
    pub elems: usize,
    /// Elements allocated in all, the delta and every intermediate included.
    pub total: usize,
}

impl Planned {
    fn new(shape: Vec<usize>, extra: usize) -> Result<Self, ModuleError> {
        let elems = elems(&shape)?;
        let total = elems.checked_add(extra).ok_or_else(overflow)?;
        Ok(Self {
            shape,
            elems,
            total,
        })
    }
}

fn overflow() -> ModuleError {
    ModuleError::Shapes("the factor shapes multiply out past any addressable size".into())
}

fn mul(a: usize, b: usize) -> Result<usize, ModuleError> {
    a.checked_mul(b).ok_or_else(overflow)
}

fn elems(shape: &[usize]) -> Result<usize, ModuleError> {
    shape.iter().try_fold(1usize, |acc, &d| mul(acc, d))
}

fn dim(shape: &[usize], i: usize) -> Result<usize, ModuleError> {
    shape.get(i).copied().ok_or_else(|| {
        ModuleError::Shapes(format!("factor of shape {shape:?} has no dimension {i}"))
    })
}

fn shapes(role: &str, shape: &[usize], want: &str) -> ModuleError {
    ModuleError::Shapes(format!("`{role}` has shape {shape:?}, expected {want}"))
}

/// `a [p, r] · b [r, q]` (both matrices) → `[p, q]`.
fn matmul_plan(a: &[usize], b: &[usize]) -> Result<Planned, ModuleError> {
    if a.len() != 2 || b.len() != 2 || a[1] != b[0] {
        return Err(ModuleError::Shapes(format!(
            "factors {a:?} and {b:?} cannot be multiplied (need [p, r] · [r, q])"
        )));
    }
    Planned::new(vec![a[0], b[1]], 0)
}

/// [`math::cp_rebuild`]`(left [o, n], core [n, m, kh, kw], right [m, i])` → `[o, i, kh, kw]`;
/// its intermediate is `[o, m·kh·kw]` (twice: product and transposed copy).
fn cp_plan(left: &[usize], core: &[usize], right: &[usize]) -> Result<Planned, ModuleError> {
    let ok = left.len() == 2
        && core.len() == 4
        && right.len() == 2
        && left[1] == core[0]
        && core[1] == right[0];
    if !ok {
        return Err(ModuleError::Shapes(format!(
            "CP factors {left:?}, core {core:?} and {right:?} do not compose"
        )));
    }
    let inter = elems(&[left[0], core[1], core[2], core[3]])?;
    Planned::new(vec![left[0], right[1], core[2], core[3]], mul(inter, 2)?)
}

/// One LoHa factor: `a [r, ..]·b` per [`math::loha_factor`].
fn loha_plan(a: &[usize], b: &[usize], t: Option<Vec<usize>>) -> Result<Planned, ModuleError> {
    match t {
        None => matmul_plan(a, b),
        Some(t) => {
            if a.len() != 2 {
                return Err(shapes("hada_w*_a", a, "a matrix"));
            }
            cp_plan(&[a[1], a[0]], &t, b)
        }
    }
}
