//! Path-keyed access to every float tensor of a module (parameters and BatchNorm running
//! statistics), as flat 1-D tensors. The optimizer, the weight EMA, BN recalibration and the
//! training checkpoints all work through these two functions, so they agree on names: the
//! torchvision keys (enum variant names are skipped, as in the weight files).

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// One tensor, flattened, with its original shape.
#[derive(Debug, Clone)]
pub struct Flat {
    pub dims: Vec<usize>,
    /// On the plain (non-autodiff) device, detached.
    pub value: Tensor<1>,
    /// Whether the tensor is trained (false for running statistics and frozen parameters).
    pub trainable: bool,
}

/// The current module path during a visit, without enum variant names (`MobileNet::V2`), which
/// are not part of torchvision's keys.
#[derive(Default)]
pub(crate) struct PathStack(Vec<String>);

impl PathStack {
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.0.push(name.to_string());
        }
    }
    pub(crate) fn exit(&mut self, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.0.pop();
        }
    }
    pub(crate) fn path(&self) -> String {
        self.0.join(".")
    }
}

/// Receives every float tensor of a module with its torchvision key, in visiting order.
trait KeyedVisit {
    fn tensor<const D: usize>(&mut self, key: String, tensor: Tensor<D>);
}

/// A module visitor that tracks the key and hands each float tensor to a [`KeyedVisit`].
struct Keyed<V> {
    stack: PathStack,
    inner: V,
}

impl<V: KeyedVisit> ModuleVisitor for Keyed<V> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.stack.exit(container_type);
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.inner.tensor(self.stack.path(), param.val());
    }
}

fn visit_keyed<M: Module, V: KeyedVisit>(module: &M, inner: V) -> V {
    let mut visitor = Keyed { stack: PathStack::default(), inner };
    module.visit(&mut visitor);
    visitor.inner
}

/// Every float tensor of `module`, by torchvision key.
pub fn collect<M: Module>(module: &M) -> BTreeMap<String, Flat> {
    struct Collect(BTreeMap<String, Flat>);
    impl KeyedVisit for Collect {
        fn tensor<const D: usize>(&mut self, key: String, tensor: Tensor<D>) {
            let trainable = tensor.is_require_grad();
            let dims = tensor.dims().to_vec();
            let value = tensor.inner().detach().flatten::<1>(0, D - 1);
            self.0.insert(key, Flat { dims, value, trainable });
        }
    }
    visit_keyed(module, Collect(BTreeMap::new())).0
}

/// Rebuilds `module` with `update(path, flat)` applied to every float tensor; `None` keeps the
/// tensor as it is. Updated parameters keep their id and whether they require gradients.
pub fn map<M: Module>(module: M, update: impl FnMut(&str, &Flat) -> Option<Tensor<1>>) -> M {
    struct Map<F> {
        stack: PathStack,
        update: F,
    }
    impl<F: FnMut(&str, &Flat) -> Option<Tensor<1>>> ModuleMapper for Map<F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, container_type: &str) {
            self.stack.exit(container_type);
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let trainable = tensor.is_require_grad();
            let dims = tensor.dims();
            let flat =
                Flat { dims: dims.to_vec(), value: tensor.clone().inner().detach().flatten::<1>(0, D - 1), trainable };
            let tensor = match (self.update)(&self.stack.path(), &flat) {
                None => tensor,
                Some(new) => {
                    let device = tensor.device();
                    let new = new.reshape(dims);
                    if !device.is_autodiff() {
                        new.to_device(&device)
                    } else if trainable {
                        Tensor::from_inner(new).require_grad()
                    } else {
                        Tensor::from_inner(new)
                    }
                }
            };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    module.map(&mut Map { stack: PathStack::default(), update })
}

/// The gradient of every trained tensor of `module`, flattened, by torchvision key.
pub fn gradients<M: Module>(module: &M, grads: &burn::tensor::Gradients) -> BTreeMap<String, Tensor<1>> {
    struct Grads<'a>(&'a burn::tensor::Gradients, BTreeMap<String, Tensor<1>>);
    impl KeyedVisit for Grads<'_> {
        fn tensor<const D: usize>(&mut self, key: String, tensor: Tensor<D>) {
            if !tensor.is_require_grad() {
                return;
            }
            if let Some(grad) = tensor.grad(self.0) {
                self.1.insert(key, grad.flatten::<1>(0, D - 1));
            }
        }
    }
    visit_keyed(module, Grads(grads, BTreeMap::new())).1
}

/// Every float tensor's key and shape, in visiting order. Running statistics count as
/// parameters here, as they do in a `state_dict`.
pub fn parameter_paths<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    struct Paths(Vec<(String, Vec<usize>)>);
    impl KeyedVisit for Paths {
        fn tensor<const D: usize>(&mut self, key: String, tensor: Tensor<D>) {
            self.0.push((key, tensor.dims().to_vec()));
        }
    }
    visit_keyed(module, Paths(Vec::new())).0
}

/// A BatchNorm running statistic (a buffer: no gradient, no optimizer state), by its key.
pub fn is_running_stat(key: &str) -> bool {
    key.ends_with(".running_mean") || key.ends_with(".running_var")
}

/// `[rows][cols]` → `[cols][rows]`: between burn's Linear layout `[in, out]` and torch's
/// `[out, in]`.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|j| data[(j % rows) * cols + j / rows]).collect()
}

/// Every tensor of `model` by torchvision key in torch's layout (Linear weights `[out, in]`):
/// what the inference engine and the CPU trainer read.
pub fn torch_layout(model: &crate::models::MobileNet) -> mobilenet_engine::NamedTensors {
    let plan = model.plan();
    collect(model)
        .into_iter()
        .map(|(key, flat)| {
            let data: Vec<f32> = flat.value.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 tensors");
            if plan.is_linear_weight(&key) {
                let (inp, out) = (flat.dims[0], flat.dims[1]);
                (key, (vec![out, inp], transpose(&data, inp, out)))
            } else {
                (key, (flat.dims, data))
            }
        })
        .collect()
}
