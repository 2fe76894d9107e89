//! Settings written once: every config that is also a set of command-line options takes its
//! `Default` from its `#[arg(default_value…)]` attributes, so that the command line and the
//! library (the bench, the demo) cannot drift apart.

/// The settings `T` takes when none of its options is given.
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true));
    let matches = command.try_get_matches_from(std::iter::empty::<String>()).unwrap_or_else(|e| panic!("{} has a required option without a default: {e}", std::any::type_name::<T>()));
    T::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{}'s defaults do not parse: {e}", std::any::type_name::<T>()))
}

/// `true`, for `#[serde(default = …)]` on switches that are on by default.
pub fn yes() -> bool {
    true
}

/// Whether a switch is at `true`, for `#[serde(skip_serializing_if = …)]`.
pub fn is_yes(v: &bool) -> bool {
    *v
}
