//! `nn.Sequential`-style child numbering for burn modules.
//!
//! torchvision names the children of an `nn.Sequential` by position: `features.3.block.1.0.weight`.
//! burn's `#[derive(Module)]` names children after Rust fields, and Rust fields cannot be called
//! `0`. The [`sequential!`](crate::sequential) macro declares a struct whose children are typed,
//! named Rust fields, but whose module paths are their positions, counted the way `nn.Sequential`
//! counts them: an absent `Option` child takes no index (torchvision's V3 block without an expand
//! conv starts at the depthwise conv), and a `Vec` child takes one index per element. With these
//! paths a torchvision `state_dict` loads with no key remapping at all.

use burn::module::{ModuleMapper, ModuleVisitor};

/// A child of a [`sequential!`](crate::sequential) struct: it occupies zero or more consecutive
/// `nn.Sequential` indices, starting at `*next`.
pub trait SequentialChild: Sized {
    /// Visits the child's parameters under the indices it occupies.
    fn visit_numbered<V: ModuleVisitor>(&self, next: &mut usize, container: &str, visitor: &mut V);
    /// Maps the child's parameters under the indices it occupies.
    fn map_numbered<M: ModuleMapper>(self, next: &mut usize, container: &str, mapper: &mut M) -> Self;
}

/// Implements [`SequentialChild`] for modules that occupy exactly one index.
#[macro_export]
macro_rules! single_sequential_child {
    ($($ty:ty),* $(,)?) => {$(
        impl $crate::models::sequential::SequentialChild for $ty {
            fn visit_numbered<V: burn::module::ModuleVisitor>(
                &self, next: &mut usize, container: &str, visitor: &mut V,
            ) {
                let key = next.to_string();
                *next += 1;
                visitor.enter_module(&key, container);
                burn::module::Module::visit(self, visitor);
                visitor.exit_module(&key, container);
            }
            fn map_numbered<M: burn::module::ModuleMapper>(
                self, next: &mut usize, container: &str, mapper: &mut M,
            ) -> Self {
                let key = next.to_string();
                *next += 1;
                mapper.enter_module(&key, container);
                let mapped = burn::module::Module::map(self, mapper);
                mapper.exit_module(&key, container);
                mapped
            }
        }
    )*};
}

single_sequential_child!(burn::nn::conv::Conv2d, burn::nn::Linear, burn::nn::Dropout);

impl<T: SequentialChild> SequentialChild for Option<T> {
    fn visit_numbered<V: ModuleVisitor>(&self, next: &mut usize, container: &str, visitor: &mut V) {
        if let Some(child) = self {
            child.visit_numbered(next, container, visitor);
        }
    }
    fn map_numbered<M: ModuleMapper>(self, next: &mut usize, container: &str, mapper: &mut M) -> Self {
        self.map(|child| child.map_numbered(next, container, mapper))
    }
}

impl<T: SequentialChild> SequentialChild for Vec<T> {
    fn visit_numbered<V: ModuleVisitor>(&self, next: &mut usize, container: &str, visitor: &mut V) {
        for child in self {
            child.visit_numbered(next, container, visitor);
        }
    }
    fn map_numbered<M: ModuleMapper>(self, next: &mut usize, container: &str, mapper: &mut M) -> Self {
        self.into_iter().map(|child| child.map_numbered(next, container, mapper)).collect()
    }
}

/// Declares a module struct whose children are numbered like an `nn.Sequential`.
///
/// ```text
/// sequential! {
///     /// torchvision's `Conv2dNormActivation`: children `0` (conv) and `1` (norm).
///     pub struct Conv2dNormActivation {
///         pub conv: Conv2d,
///         pub norm: BatchNorm2d,
///         pub activation: Activation,
///     }
///     config { pub stride: usize }
/// }
/// ```
/// Children are listed in `nn.Sequential` order; each must implement [`SequentialChild`] and
/// [`Module`]. Fields in the optional `config` block are plain values copied along unchanged.
/// The struct itself also implements [`SequentialChild`], so it can be nested.
#[macro_export]
macro_rules! sequential {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$child_meta:meta])* $child_vis:vis $child:ident : $child_ty:ty ),* $(,)?
        }
        $( config { $( $(#[$plain_meta:meta])* $plain_vis:vis $plain:ident : $plain_ty:ty ),* $(,)? } )?
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        $vis struct $name {
            $( $(#[$child_meta])* $child_vis $child: $child_ty, )*
            $($( $(#[$plain_meta])* $plain_vis $plain: $plain_ty, )*)?
        }

        impl burn::module::Module for $name {
            fn visit<V: burn::module::ModuleVisitor>(&self, visitor: &mut V) {
                let container = concat!("Struct:", stringify!($name));
                let mut next = 0usize;
                $( $crate::models::sequential::SequentialChild::visit_numbered(
                    &self.$child, &mut next, container, visitor); )*
                let _ = next;
            }

            fn map<M: burn::module::ModuleMapper>(self, mapper: &mut M) -> Self {
                let container = concat!("Struct:", stringify!($name));
                let mut next = 0usize;
                let Self { $($child,)* $($($plain,)*)? } = self;
                $( let $child = $crate::models::sequential::SequentialChild::map_numbered(
                    $child, &mut next, container, mapper); )*
                let _ = next;
                Self { $($child,)* $($($plain,)*)? }
            }

            fn collect_devices(&self, devices: burn::module::Devices) -> burn::module::Devices {
                $( let devices = burn::module::Module::collect_devices(&self.$child, devices); )*
                devices
            }

            fn to_device(self, device: &burn::tensor::Device) -> Self {
                let Self { $($child,)* $($($plain,)*)? } = self;
                $( let $child = burn::module::Module::to_device($child, device); )*
                Self { $($child,)* $($($plain,)*)? }
            }

            fn fork(self, device: &burn::tensor::Device) -> Self {
                let Self { $($child,)* $($($plain,)*)? } = self;
                $( let $child = burn::module::Module::fork($child, device); )*
                Self { $($child,)* $($($plain,)*)? }
            }

            fn valid(&self) -> Self {
                Self {
                    $( $child: burn::module::Module::valid(&self.$child), )*
                    $($( $plain: self.$plain.clone(), )*)?
                }
            }

            fn train(self) -> Self {
                let Self { $($child,)* $($($plain,)*)? } = self;
                $( let $child = burn::module::Module::train($child); )*
                Self { $($child,)* $($($plain,)*)? }
            }

            fn materialize(self) -> Self {
                let Self { $($child,)* $($($plain,)*)? } = self;
                $( let $child = burn::module::Module::materialize($child); )*
                Self { $($child,)* $($($plain,)*)? }
            }
        }

        impl Clone for $name {
            fn clone(&self) -> Self {
                Self {
                    $( $child: self.$child.clone(), )*
                    $($( $plain: self.$plain.clone(), )*)?
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}", stringify!($name))
            }
        }

        impl burn::module::ModuleDisplayDefault for $name {
            fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
                content
                    .set_top_level_type(stringify!($name))
                    $( .add(stringify!($child), &self.$child) )*
                    .optional()
            }
            fn num_params(&self) -> usize {
                burn::module::Module::num_params(self)
            }
        }

        impl burn::module::ModuleDisplay for $name {}

        $crate::single_sequential_child!($name);
    };
}
