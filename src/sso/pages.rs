//! The two HTML pages of the browser login: the provider chooser and the refused sign-in; every text in them is escaped, and they hold no script.

use std::fmt::Write as _;

/// One choice of the chooser page.
#[derive(Debug, Clone, Copy)]
pub struct Choice<'c> {
    /// What the person reads.
    pub label: &'c str,
    /// Where the link goes.
    pub href: &'c str,
}

/// The page's frame around `body` (already escaped).
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// The chooser: a link per provider.
pub fn chooser(choices: &[Choice<'_>]) -> String {
    let mut body = String::from("<h1>Sign in</h1>\n<ul>\n");
    for choice in choices {
        // Writing to a String cannot fail.
        let _ =
            writeln!(body, "<li><a href=\"{}\">Sign in with {}</a></li>", escape(choice.href), escape(choice.label));
    }
    body.push_str("</ul>\n");
    page("Sign in", &body)
}

/// The page of a sign-in the provider vouched for but the settings refuse: why, and nothing else.
pub fn refused(reason: &str) -> String {
    page("Sign-in refused", &format!("<h1>Sign-in refused</h1>\n<p>{}</p>\n", escape(reason)))
}

/// `text` safe in HTML text and in a double-quoted attribute.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chooser_escapes_every_label_and_link_and_holds_no_script() {
        let html = chooser(&[
            Choice { label: "<script>alert(1)</script>", href: "/oauth2/start?provider=a&rd=%2F\"x" },
            Choice { label: "GitHub", href: "/oauth2/start?provider=github&rd=%2F" },
        ]);
        assert!(html.contains("Sign in with &lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(html.contains("href=\"/oauth2/start?provider=a&amp;rd=%2F&quot;x\""), "{html}");
        assert!(html.contains("<a href=\"/oauth2/start?provider=github&amp;rd=%2F\">Sign in with GitHub</a>"));
        assert!(!html.to_ascii_lowercase().contains("<script"), "{html}");
    }

    #[test]
    fn the_refusal_page_says_why_escaped() {
        assert!(refused("not in <org>").contains("<p>not in &lt;org&gt;</p>"));
    }
}
