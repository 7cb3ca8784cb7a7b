//! Device description from the `User-Agent` header.

use std::fmt;
use std::str::FromStr;

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

impl DeviceInfo {
    /// Describes the device behind a `User-Agent` header value, using the woothee dataset.
    #[must_use]
    pub fn from_user_agent(user_agent: Option<&str>) -> Self {
        let Some(ua) = user_agent.map(str::trim).filter(|ua| !ua.is_empty()) else {
            return Self::unknown("Unknown device");
        };
        let ua = truncate(ua, MAX_USER_AGENT_LEN);
        let Some(parsed) = woothee::parser::Parser::new().parse(ua) else {
            return Self::unknown(product(ua));
        };
        let device_type = match parsed.category {
            "crawler" => DeviceType::Bot,
            "smartphone" | "mobilephone" if is_tablet(ua, parsed.os) => DeviceType::Tablet,
            "smartphone" | "mobilephone" => DeviceType::Mobile,
            "pc" => DeviceType::Desktop,
            _ => DeviceType::Unknown,
        };
        let os = match parsed.os {
            "UNKNOWN" | "" => None,
            "Mac OSX" => Some("macOS"),
            os if os.starts_with("Windows") => Some("Windows"),
            os => Some(os),
        };
        let description = match (parsed.name, os) {
            // woothee names libraries generically ("HTTP Library"); their product token says more.
            _ if device_type == DeviceType::Unknown => product(ua).to_owned(),
            (name, _) if device_type == DeviceType::Bot => name.to_owned(),
            ("UNKNOWN" | "", Some(os)) => os.to_owned(),
            ("UNKNOWN" | "", None) => product(ua).to_owned(),
            (name, Some(os)) => format!("{name} on {os}"),
            (name, None) => name.to_owned(),
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

fn is_tablet(ua: &str, os: &str) -> bool {
    // woothee files tablets under "smartphone"; iPads say so, Android tablets omit "Mobile".
    os == "iPad" || (os == "Android" && !ua.contains("Mobile"))
}

/// The first product token ("curl/8.5.0" → "curl"), for clients woothee does not know.
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
