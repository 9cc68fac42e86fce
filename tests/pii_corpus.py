# ruff: noqa: E501  (corpus lines are data; splitting them hides what is tested)
"""A labelled corpus for the redaction test: texts with the PII they hold, and texts that hold none.

``POSITIVES``: (text, [(kind, exact substring that must be redacted), ...]).
``NEGATIVES``: texts with ordinary numbers, dates, versions, prices, ids and
name-like words that must come back unchanged. Card numbers are the networks'
published test numbers; keys and tokens are made up in the issuers' shapes.
"""

from __future__ import annotations

POSITIVES: list[tuple[str, list[tuple[str, str]]]] = [
    # --- EMAIL
    ("Contact me at jane.doe@example.com please.", [("EMAIL", "jane.doe@example.com")]),
    (
        "my email is JOHN_SMITH+billing@Mail.Example.co.uk.",
        [("EMAIL", "JOHN_SMITH+billing@Mail.Example.co.uk")],
    ),
    ("(a.b-c@sub-domain.example.org)", [("EMAIL", "a.b-c@sub-domain.example.org")]),
    (
        "Send it to ops@company.io, cc finance@company.io",
        [("EMAIL", "ops@company.io"), ("EMAIL", "finance@company.io")],
    ),
    ("<maria.garcia99@correo.es>", [("EMAIL", "maria.garcia99@correo.es")]),
    ("email:first.last@university.edu", [("EMAIL", "first.last@university.edu")]),
    ("x_y%z@host-name.museum wrote", [("EMAIL", "x_y%z@host-name.museum")]),
    ("Reply-To: noreply@notifications.github.com", [("EMAIL", "noreply@notifications.github.com")]),
    ("'o.reilly@example.ie' is the address", [("EMAIL", "o.reilly@example.ie")]),
    ("user123@gmail.com\nthanks", [("EMAIL", "user123@gmail.com")]),
    ("Mail müller@example.de? no: mueller@example.de", [("EMAIL", "mueller@example.de")]),
    ("ping t@x.co now", [("EMAIL", "t@x.co")]),
    # --- PHONE: international (+CC / 00CC)
    ("Call +1 (555) 123-4567 today.", [("PHONE", "+1 (555) 123-4567")]),
    ("UK office: +44 20 7946 0958", [("PHONE", "+44 20 7946 0958")]),
    ("Berlin +49 30 1234567", [("PHONE", "+49 30 1234567")]),
    ("Munich +49 (0)89 1234 5678 ext", [("PHONE", "+49 (0)89 1234 5678")]),
    ("Paris: +33 6 12 34 56 78.", [("PHONE", "+33 6 12 34 56 78")]),
    ("NL +31 20 123 4567", [("PHONE", "+31 20 123 4567")]),
    ("Rome +39 06 1234 5678", [("PHONE", "+39 06 1234 5678")]),
    ("Madrid +34 912 345 678", [("PHONE", "+34 912 345 678")]),
    ("mobile +4915112345678", [("PHONE", "+4915112345678")]),
    ("+1-555-987-6543 is the hotline", [("PHONE", "+1-555-987-6543")]),
    ("Sydney +61 2 9876 5432", [("PHONE", "+61 2 9876 5432")]),
    ("India +91 98765 43210", [("PHONE", "+91 98765 43210")]),
    ("dial 0044 20 7946 0958 from abroad", [("PHONE", "0044 20 7946 0958")]),
    ("or 0049 30 1234567", [("PHONE", "0049 30 1234567")]),
    ("+41.44.668.18.00 (Zurich)", [("PHONE", "+41.44.668.18.00")]),
    # --- PHONE: North American
    ("Call (555) 123-4567.", [("PHONE", "(555) 123-4567")]),
    ("my number is 555-123-4567", [("PHONE", "555-123-4567")]),
    ("555.123.4567 after 5pm", [("PHONE", "555.123.4567")]),
    ("toll free 1-800-555-0199", [("PHONE", "1-800-555-0199")]),
    ("cell: 415 555 0132", [("PHONE", "415 555 0132")]),
    ("(212)555-0188 front desk", [("PHONE", "(212)555-0188")]),
    # --- PHONE: European national (trunk 0)
    ("Ruf an: 030 1234567", [("PHONE", "030 1234567")]),
    ("Tel. 030/1234567", [("PHONE", "030/1234567")]),
    ("Handy 0151 12345678", [("PHONE", "0151 12345678")]),
    ("appelle 06 12 34 56 78", [("PHONE", "06 12 34 56 78")]),
    ("ou 06.12.34.56.78", [("PHONE", "06.12.34.56.78")]),
    ("ring 020 7946 0958 24 hours a day", [("PHONE", "020 7946 0958")]),
    ("mobile 07911 123456", [("PHONE", "07911 123456")]),
    ("bel 020-123 4567", [("PHONE", "020-123 4567")]),
    ("chiama 06 1234 5678", [("PHONE", "06 1234 5678")]),
    ("Wien 01 234 5678", [("PHONE", "01 234 5678")]),
    # --- CREDIT_CARD (Luhn-valid test numbers)
    ("card 4111 1111 1111 1111 exp 12/27", [("CREDIT_CARD", "4111 1111 1111 1111")]),
    ("4012888888881881", [("CREDIT_CARD", "4012888888881881")]),
    ("old visa 4222222222222", [("CREDIT_CARD", "4222222222222")]),
    ("MC 5555-5555-5555-4444", [("CREDIT_CARD", "5555-5555-5555-4444")]),
    ("5105 1051 0510 5100 was declined", [("CREDIT_CARD", "5105 1051 0510 5100")]),
    ("new MC range 2223003122003222", [("CREDIT_CARD", "2223003122003222")]),
    ("amex 3782 822463 10005", [("CREDIT_CARD", "3782 822463 10005")]),
    ("Amex: 371449635398431.", [("CREDIT_CARD", "371449635398431")]),
    ("discover 6011 1111 1111 1117", [("CREDIT_CARD", "6011 1111 1111 1117")]),
    ("6011000990139424 charged twice", [("CREDIT_CARD", "6011000990139424")]),
    ("JCB 3530 1113 3330 0000", [("CREDIT_CARD", "3530 1113 3330 0000")]),
    ("jcb 3566002020360505", [("CREDIT_CARD", "3566002020360505")]),
    ("diners 30569309025904", [("CREDIT_CARD", "30569309025904")]),
    ("unionpay 6200000000000005", [("CREDIT_CARD", "6200000000000005")]),
    (
        "paid with 4111-1111-1111-1111, then 5555 5555 5555 4444",
        [
            ("CREDIT_CARD", "4111-1111-1111-1111"),
            ("CREDIT_CARD", "5555 5555 5555 4444"),
        ],
    ),
    # --- IPV4
    ("server at 192.168.1.10 is down", [("IPV4", "192.168.1.10")]),
    ("from 10.0.0.1:8080", [("IPV4", "10.0.0.1")]),
    ("ip=8.8.8.8.", [("IPV4", "8.8.8.8")]),
    ("(172.16.254.1)", [("IPV4", "172.16.254.1")]),
    ("block 203.0.113.0/24 now", [("IPV4", "203.0.113.0/24")]),
    ("client 255.255.255.255 and 0.0.0.0", [("IPV4", "255.255.255.255"), ("IPV4", "0.0.0.0")]),
    ("X-Forwarded-For: 198.51.100.23, 127.0.0.1", [("IPV4", "198.51.100.23"), ("IPV4", "127.0.0.1")]),
    ("http://100.64.12.7/admin", [("IPV4", "100.64.12.7")]),
    # --- IPV6
    ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334 ok", [("IPV6", "2001:0db8:85a3:0000:0000:8a2e:0370:7334")]),
    ("short 2001:db8::1 form", [("IPV6", "2001:db8::1")]),
    ("link-local fe80::1ff:fe23:4567:890a%eth0", [("IPV6", "fe80::1ff:fe23:4567:890a%eth0")]),
    ("loopback ::1 only", [("IPV6", "::1")]),
    ("http://[2001:db8:85a3::8a2e:370:7334]:443/", [("IPV6", "2001:db8:85a3::8a2e:370:7334")]),
    ("mapped ::ffff:192.0.2.128 addr", [("IPV6", "::ffff:192.0.2.128")]),
    ("FE80::0202:B3FF:FE1E:8329 upper", [("IPV6", "FE80::0202:B3FF:FE1E:8329")]),
    ("dns 2606:4700:4700::1111.", [("IPV6", "2606:4700:4700::1111")]),
    ("peer fd12:3456:789a:1::1", [("IPV6", "fd12:3456:789a:1::1")]),
    # --- secrets
    ("aws key AKIAIOSFODNN7EXAMPLE in the log", [("AWS_ACCESS_KEY", "AKIAIOSFODNN7EXAMPLE")]),
    ("ASIAY34FZKBOKMUTVV7A was the session key", [("AWS_ACCESS_KEY", "ASIAY34FZKBOKMUTVV7A")]),
    (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        [("SECRET", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")],
    ),
    (
        "token ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
        [("GITHUB_TOKEN", "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8")],
    ),
    (
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGH used",
        [("GITHUB_TOKEN", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGH")],
    ),
    (
        "gho_16C7e42F292c6912E7710c838347Ae178B4a in CI",
        [("GITHUB_TOKEN", "gho_16C7e42F292c6912E7710c838347Ae178B4a")],
    ),
    (
        "SLACK_BOT=xoxb-2048-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        [("SLACK_TOKEN", "xoxb-2048-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx")],
    ),
    (
        "user token xoxp-1111-2222-3333-abcdef0123456789",
        [("SLACK_TOKEN", "xoxp-1111-2222-3333-abcdef0123456789")],
    ),
    (
        "hook https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        [("SLACK_TOKEN", "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX")],
    ),
    (
        "OPENAI_API_KEY=sk-abc123DEF456ghi789JKL012mno345PQR",
        [("API_KEY", "sk-abc123DEF456ghi789JKL012mno345PQR")],
    ),
    (
        "use sk-proj-Ab12Cd34Ef56Gh78Ij90_Kl12Mn34-Op56Qr78 here",
        [("API_KEY", "sk-proj-Ab12Cd34Ef56Gh78Ij90_Kl12Mn34-Op56Qr78")],
    ),
    (
        "anthropic sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345",
        [("API_KEY", "sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345")],
    ),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", [("API_KEY", "sk_live_4eC39HqLyjWDarjtT1zdp7dc")]),
    (
        "maps AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        [("API_KEY", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q")],
    ),
    ("Authorization: Bearer abcDEF123456ghiJKL789", [("BEARER_TOKEN", "abcDEF123456ghiJKL789")]),
    (
        "curl -H 'authorization: bearer 0a1b2c3d4e5f6a7b8c9d0e1f=='",
        [("BEARER_TOKEN", "0a1b2c3d4e5f6a7b8c9d0e1f==")],
    ),
    (
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        [
            (
                "JWT",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            )
        ],
    ),
    ('{"password": "hunter2hunter2"}', [("SECRET", "hunter2hunter2")]),
    ("DB_PASSWORD=S3cr3t!Pass", [("SECRET", "S3cr3t!Pass")]),
    ("api_key: 9f8e7d6c5b4a39281706", [("SECRET", "9f8e7d6c5b4a39281706")]),
    ("client_secret='abcDEF-123_456'", [("SECRET", "abcDEF-123_456")]),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7V1b\nq0Yd3fR2\n-----END RSA PRIVATE KEY-----\nthanks",
        [
            (
                "PRIVATE_KEY",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7V1b\nq0Yd3fR2\n-----END RSA PRIVATE KEY-----",
            )
        ],
    ),
    (
        "key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
        [
            (
                "PRIVATE_KEY",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            )
        ],
    ),
    (
        "truncated -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
        [("PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC")],
    ),
    # --- several kinds in one text
    (
        "I'm Anna (anna.k@firma.de, +49 170 1234567), my IP is 81.2.69.160 and card 4012888888881881.",
        [
            ("EMAIL", "anna.k@firma.de"),
            ("PHONE", "+49 170 1234567"),
            ("IPV4", "81.2.69.160"),
            ("CREDIT_CARD", "4012888888881881"),
        ],
    ),
]

NEGATIVES: list[str] = [
    "The meeting is on 2024-03-15 at 14:30, or 15/03/2024, or 03/15/2024.",
    "Dates like 01.02.2024 and 01-02-2024 11:30 and 2024/12/31 23:59:59.",
    "Upgrade from Python 3.11.4 to 3.12.1; numpy==1.24.4, torch 2.1.0, v1.2.3-rc.1.",
    "It costs $1,299.99, or €1.299,00, or £12.50 per month; 1 234 567 people paid 100 000 CHF.",
    "Order #123456789 shipped; tracking ORD-2024-000123, invoice 20240315-0042, SKU 00012345.",
    "ISBN 978-3-16-148410-0 and ISSN 0317-8471; DOI 10.1000/182.",
    "Population 8 336 817 in 2021; GDP grew 2.5% to 25,462,700 million.",
    "Pi is 3.14159265358979 and e is 2.718281828459045.",
    "Coordinates 51.5074, -0.1278 and 40.7128 N 74.0060 W.",
    "The ratio was 3:2:1 and the run took 12:30:45; at 9:05 am the MAC 00:1A:2B:3C:4D:5E joined.",
    "Slices like a[1::2] and a[::-1]; std::vector<int> and Foo::bar() in C++.",
    "Card ending 1111; a failing number 4111 1111 1111 1112; 1234 5678 9012 3456 is not a card.",
    "Timestamps 1700000000 and 1700000000123 in milliseconds.",
    "+5 points, +20% growth, 3+4=7, and +12.5 degrees.",
    "The task-force met; skip sk-learn; ask-me-anything; the desk-top is clean.",
    "The password is strong and the token expired; your secret is safe with me.",
    "The bearer of bad news arrived; bearer bonds are obsolete.",
    "Grace Hopper, Ada Lovelace, Alan Turing and Rose Garden met Will Smith and Amber Heard.",
    "Mr. Bill Gates and Mrs. May Day; Paris Hilton visited Paris; April and June.",
    "Postcode SW1A 1AA and ZIP 90210-1234; room 0.12; flight LH 400.",
    "UUID 123e4567-e89b-12d3-a456-426614174000 and SHA-256 "
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08.",
    "Git commit 4f5a1d2 on branch main; base64 SGVsbG8gd29ybGQ=.",
    "the package foo@1.2.3 and the image icon@2x.png; @username said hi.",
    "Versions 10.0.19041.1 and 1.2.3.4.5 of the build.",
    "Scores 98.6, 100.0 and 0.001; 1e-9 tolerance; 6.02e23 atoms.",
    "Line 1-2-3 of the song; chapters 12-34-5678 in the archive.",
    "Call extension 4021 or room 555; between 1999-2004 and 2010-2015.",
    "The 12 34 56 rule and the 2 4 6 8 10 pattern.",
    "Matrix 3x4, resolution 1920x1080, 4K at 60Hz.",
    "I paid 49 99 and then 12 00 again.",
    "Build 20240315.1 passed 1542 of 1550 tests in 0:03:12.",
    "Temperature ranged from -12 to +35 degrees; altitude 8,848 m.",
    "AKIA is how the docs prefix keys; the word AKIAPOLIS is not one.",
    "His name is Mark Down and hers is Robin Banks; they live on Main Street 12.",
]
