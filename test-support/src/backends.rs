//! One test per backend per scenario: [`for_each_backend!`](crate::for_each_backend).

/// Runs each scenario against each backend: a module per scenario, holding one test per backend
/// that calls `scenario(backend).await`.
///
/// A scenario is an `async fn` of the test file that takes what the backend expression gives (a
/// store, a cluster of instances, an enum value that names the backend …). Each backend is a
/// test name and an expression (it may `.await`), with optional attributes such as `#[cfg(feature = "redis")]` to
/// gate it on a cargo feature. The test attribute is given once, first:
///
/// ```rust,ignore
/// test_support::for_each_backend! {
///     #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
///     backends {
///         memory => common::memory(),
///         #[cfg(feature = "sqlite")]
///         sqlite => common::sqlite().await,
///     }
///     scenarios { revoke_then_use_fails, rotation_has_one_winner }
/// }
/// ```
///
/// gives the tests `revoke_then_use_fails::memory`, `revoke_then_use_fails::sqlite`,
/// `rotation_has_one_winner::memory` and `rotation_has_one_winner::sqlite`: filter by scenario
/// with `cargo test revoke_then_use_fails`, by backend with `cargo test ::sqlite`. The modules
/// import everything of the test file (`use super::*`), so the expressions are written as at
/// its top level.
#[macro_export]
macro_rules! for_each_backend {
    (
        #[$test:meta]
        backends $backends:tt
        scenarios { $($scenario:ident),* $(,)? }
    ) => {
        $( $crate::for_each_backend!(@scenario $scenario [$test] $backends); )*
    };
    (
        @scenario $scenario:ident [$test:meta]
        { $( $(#[$attr:meta])* $backend:ident => $make:expr ),* $(,)? }
    ) => {
        mod $scenario {
            #[allow(unused_imports)]
            use super::*;

            $(
                $(#[$attr])*
                #[$test]
                async fn $backend() {
                    super::$scenario($make).await;
                }
            )*
        }
    };
}
