//! One name table per closed set of choices: [`named_enum!`](crate::named_enum) declares an enum
//! with, for each variant, its name, its aliases and its help line, and derives from that one
//! table everything that names it — `ALL`, `name`, `from_name` (aliases accepted, the error
//! lists the names), `FromStr`, `Display`, serde (configs, metadata, reports: the name) and,
//! under the `cli` feature, clap's `ValueEnum` (the possible values and their help).

/// Declares a `Copy` enum named by one table:
///
/// ```ignore
/// named_enum! {
///     /// Doc of the enum.
///     pub enum Grid ("step grid") {
///         /// Help line of the variant.
///         Default = "default",
///         LogSnr = "logsnr" | "lambda",
///     }
/// }
/// ```
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $(
                $(#[doc = $doc:literal])*
                $variant:ident = $str:literal $(| $alias:literal)*
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[doc = $doc])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name in files and on the command line.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $str),+
                }
            }

            /// Parses a name or an alias.
            pub fn from_name(s: &str) -> $crate::Result<Self> {
                match s {
                    $($str $(| $alias)* => Ok($name::$variant),)+
                    _ => Err($crate::Error::invalid(format!(
                        "unknown {} `{s}`: expected {}",
                        $what,
                        [$($str),+].join(", ")
                    ))),
                }
            }

            /// The help line of the variant (its doc comment).
            pub fn help(self) -> String {
                match self {
                    $($name::$variant => {
                        let lines: &[&str] = &[$($doc),*];
                        let text = lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
                        // as clap's derive shows a one-paragraph doc: without its final period
                        text.strip_suffix('.').map_or(text.clone(), str::to_string)
                    }),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<Self> {
                Self::from_name(s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                Self::from_name(&s).map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "cli")]
        impl clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                Self::ALL
            }

            fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
                let v = clap::builder::PossibleValue::new(self.name()).help(self.help());
                Some(match self {
                    $($name::$variant => v $(.alias($alias))*),+
                })
            }
        }
    };
}

/// The macro by its module path (`crate::util::names::named_enum!`), so that a use of it names
/// the layer it comes from.
pub use super::super::named_enum;
