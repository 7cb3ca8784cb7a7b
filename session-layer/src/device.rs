//! Device description from the `User-Agent` header.

use std::fmt;
use std::str::FromStr;
use std::sync::{Once, OnceLock};

/// The kind of device a session was created on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DeviceType {
    /// Desktop or laptop browser.
    Desktop,
    /// Phone.
    Mobile,
    /// Tablet.
    Tablet,
    /// Crawler or other automated client.
    Bot,
    /// Not recognised (curl, a custom app, no header).
    #[default]
    Unknown,
}

impl DeviceType {
    /// `desktop`, `mobile`, `tablet`, `bot` or `unknown`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Mobile => "mobile",
            Self::Tablet => "tablet",
            Self::Bot => "bot",
            Self::Unknown => "unknown",
        }
    }
}

#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
impl serde::Serialize for DeviceType {
    /// As [`as_str`](Self::as_str).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceType {
    type Err = std::convert::Infallible;

    /// Unrecognised strings read as [`DeviceType::Unknown`], so old rows never fail to load.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "desktop" => Self::Desktop,
            "mobile" => Self::Mobile,
            "tablet" => Self::Tablet,
            "bot" => Self::Bot,
            _ => Self::Unknown,
        })
    }
}

/// What a `User-Agent` says about the device: "Chrome on Windows", desktop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Human description such as "Chrome on Windows" or "Safari on iPhone".
    pub description: String,
    /// The kind of device.
    pub device_type: DeviceType,
}

/// Longest `User-Agent` that is parsed or stored; real ones are well under this.
pub(crate) const MAX_USER_AGENT_LEN: usize = 512;

/// The ua-parser (uap-core 0.18.0) dataset, converted from `regexes.yaml` to JSON so that no YAML
/// parser is needed. Apache-2.0, see `data/LICENSE-uap-core`.
const UAP_REGEXES: &str = include_str!("../data/uap-regexes.json");

/// Builds the dataset on a blocking thread of the current Tokio runtime, once per process, so
/// that the first sign-in does not wait for it (about half a second in a debug build). Called
/// when a [`SessionManager`](crate::SessionManager) is built; a sign-in that comes first waits
/// for the same build instead of starting a second one.
pub(crate) fn warm_up() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Detached: the handle is not needed, the dataset lands in `EXTRACTOR`.
            drop(runtime.spawn_blocking(|| extractor().is_some()));
        }
    });
}

/// Whether the user-agent dataset is built. For tests; not part of the API.
#[doc(hidden)]
#[must_use]
pub fn user_agent_data_ready() -> bool {
    EXTRACTOR.get().is_some()
}

static EXTRACTOR: OnceLock<Option<ua_parser::Extractor<'static>>> = OnceLock::new();

/// The compiled dataset, built on first use (it compiles about 1,200 regexes once).
fn extractor() -> Option<&'static ua_parser::Extractor<'static>> {
    EXTRACTOR
        .get_or_init(|| {
            let built = serde_json::from_str::<ua_parser::Regexes<'static>>(UAP_REGEXES)
                .map_err(|e| e.to_string())
                .and_then(|regexes| {
                    ua_parser::Extractor::try_from(regexes).map_err(|e| e.to_string())
                });
            built
                .inspect_err(|error| {
                    tracing::error!(%error, "user-agent dataset failed to load; devices will be described as unknown");
                })
                .ok()
        })
        .as_ref()
}

impl DeviceInfo {
    /// Describes the device behind a `User-Agent` header value, using the
    /// [ua-parser](https://github.com/ua-parser/uap-core) dataset.
    #[must_use]
    pub fn from_user_agent(user_agent: Option<&str>) -> Self {
        let Some(ua) = user_agent.map(str::trim).filter(|ua| !ua.is_empty()) else {
            return Self::unknown("Unknown device");
        };
        let ua = truncate(ua, MAX_USER_AGENT_LEN);
        let Some(extractor) = extractor() else {
            return Self::unknown(product(ua));
        };
        let (browser, os, device) = extractor.extract(ua);
        let known = |family: &str| family != "Other" && !family.is_empty();
        let browser = browser.map(|b| b.family).filter(|f| known(f));
        let os = os.map(|o| o.os).filter(|f| known(f));
        let device = device.map(|d| d.device).filter(|f| known(f));
        let device_type = classify(ua, os.as_deref(), device.as_deref());
        let platform = match (os.as_deref(), device.as_deref()) {
            (Some("iOS"), Some(device @ ("iPhone" | "iPad" | "iPod"))) => Some(device.to_owned()),
            (Some("Mac OS X"), _) => Some("macOS".to_owned()),
            (Some(os), _) => Some(os.to_owned()),
            (None, _) => None,
        };
        let browser = browser.map(|b| browser_name(&b).to_owned());
        let description = match (browser, platform) {
            (Some(browser), _) if device_type == DeviceType::Bot => browser,
            (Some(browser), Some(platform)) => format!("{browser} on {platform}"),
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => product(ua).to_owned(),
        };
        Self {
            description,
            device_type,
        }
    }

    fn unknown(description: &str) -> Self {
        Self {
            description: description.to_owned(),
            device_type: DeviceType::Unknown,
        }
    }
}

fn classify(ua: &str, os: Option<&str>, device: Option<&str>) -> DeviceType {
    const DESKTOP_OS: [&str; 9] = [
        "Windows",
        "Mac OS X",
        "Linux",
        "Ubuntu",
        "Chrome OS",
        "Fedora",
        "Debian",
        "FreeBSD",
        "OpenBSD",
    ];
    const MOBILE_OS: [&str; 5] = ["iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS"];
    match (os, device) {
        (_, Some("Spider")) => DeviceType::Bot,
        (_, Some(d)) if d == "iPad" || d.contains("Tablet") || d.starts_with("Kindle") => {
            DeviceType::Tablet
        }
        // Android tablets omit "Mobile" from their user agent.
        (Some("Android"), _) if !ua.contains("Mobile") => DeviceType::Tablet,
        (Some(os), _) if MOBILE_OS.contains(&os) => DeviceType::Mobile,
        (_, Some(d)) if d == "iPhone" || d.contains("Smartphone") || d.contains("Phone") => {
            DeviceType::Mobile
        }
        (Some(os), _) if DESKTOP_OS.contains(&os) || os.starts_with("Windows") => {
            DeviceType::Desktop
        }
        _ => DeviceType::Unknown,
    }
}

/// "Mobile Safari" → "Safari", "Chrome Mobile iOS" → "Chrome": the platform already says mobile.
fn browser_name(family: &str) -> &str {
    if family == "Mobile Safari" {
        return "Safari";
    }
    [" Mobile iOS", " Mobile WebView", " Mobile", " iOS"]
        .iter()
        .find_map(|suffix| family.strip_suffix(suffix))
        .filter(|name| !name.is_empty())
        .unwrap_or(family)
}

/// The first product token ("curl/8.5.0" → "curl"), for clients the dataset does not know.
fn product(ua: &str) -> &str {
    let first = ua.split([' ', '/']).next().unwrap_or(ua);
    truncate(first, 40)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(ua: &str) -> (String, DeviceType) {
        let info = DeviceInfo::from_user_agent(Some(ua));
        (info.description, info.device_type)
    }

    #[test]
    fn common_browsers_are_described() {
        assert_eq!(
            describe(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
            ),
            ("Chrome on Windows".to_owned(), DeviceType::Desktop)
        );
        assert_eq!(
            describe(
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
            ),
            ("Safari on iPhone".to_owned(), DeviceType::Mobile)
        );
        assert_eq!(
            describe(
                "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
            )
            .1,
            DeviceType::Tablet
        );
        assert_eq!(
            describe(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0"
            ),
            ("Firefox on macOS".to_owned(), DeviceType::Desktop)
        );
        assert_eq!(
            describe("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)").1,
            DeviceType::Bot
        );
    }

    #[test]
    fn android_phones_and_tablets_are_told_apart() {
        assert_eq!(
            describe(
                "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36"
            ),
            ("Chrome on Android".to_owned(), DeviceType::Mobile)
        );
        assert_eq!(
            describe(
                "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
            )
            .1,
            DeviceType::Tablet
        );
        assert_eq!(
            describe(
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91"
            ),
            ("Edge on Windows".to_owned(), DeviceType::Desktop)
        );
    }

    #[test]
    fn unknown_clients_are_named_by_their_product() {
        assert_eq!(
            describe("curl/8.5.0"),
            ("curl".to_owned(), DeviceType::Unknown)
        );
        assert_eq!(
            DeviceInfo::from_user_agent(None).device_type,
            DeviceType::Unknown
        );
        assert_eq!(
            DeviceInfo::from_user_agent(Some("   ")).description,
            "Unknown device"
        );
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
