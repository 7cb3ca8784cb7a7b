//! The user-agent dataset (about 1,200 regexes) is compiled in the background when a manager is
//! built, not by the first sign-in. Alone in its test binary: the dataset is built once per
//! process.

use std::time::Duration;

use session_layer::{MemoryStore, SessionConfig, SessionManager, user_agent_data_ready};

#[tokio::test]
async fn building_a_manager_compiles_the_user_agent_data_in_the_background() {
    assert!(!user_agent_data_ready(), "nothing has built it yet");
    let _manager = SessionManager::new(MemoryStore::new(), SessionConfig::default()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !user_agent_data_ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dataset was not built within 60 s of building the manager"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
