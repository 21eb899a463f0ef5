//! Demo customers (API.md): `+79990000001` … `+79990000100` are registered for remote
//! banking (the node seeds their logins); `+79990000101` … `+79990000200` are known to the
//! ABS only, so registration can be shown. Every one has a RUB current account with a
//! balance, a card, a deposit and a loan.

use kernel::CustomerId;
use kernel::store::{AbsCustomer, AbsProduct, AbsStore, StoreError};
use serde_json::json;

/// Customers the ABS knows.
pub const ABS_CUSTOMERS: u32 = 200;
/// Of those, the ones seeded with a remote-banking login.
pub const REGISTERED_CUSTOMERS: u32 = 100;
/// The demo password (documented in the README and printed at start).
pub const DEMO_PASSWORD: &str = "arbat-demo";

pub fn customer_id(n: u32) -> CustomerId {
    CustomerId::parse(&format!("c{n:06}")).unwrap_or_else(|_| unreachable_id())
}

fn unreachable_id() -> CustomerId {
    // Six digits after a letter always form a valid id; this keeps the code panic-free.
    CustomerId::parse("c000000").unwrap_or_else(|_| unreachable_id())
}

pub fn phone(n: u32) -> String {
    format!("+7999{n:07}")
}

/// The demo customer that owns a demo product id (`a000001` → `c000001`).
pub fn owner_of_product(product_id: &str) -> Option<CustomerId> {
    let digits = product_id.get(1..)?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    CustomerId::parse(&format!("c{digits}")).ok()
}

const NAMES: [&str; 8] = [
    "Anna Ivanova",
    "Boris Petrov",
    "Vera Sokolova",
    "Gleb Smirnov",
    "Daria Kuznetsova",
    "Egor Popov",
    "Zoya Volkova",
    "Ivan Morozov",
];

/// The account id behind a demo account number (`40817810` + 12 digits of `n`).
pub fn account_by_number(number: &str) -> Option<String> {
    let digits = number.strip_prefix("40817810")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    (1..=999_999).contains(&n).then(|| format!("a{n:06}"))
}

/// The bank's own customer record, holding its internal accounts.
pub fn bank_id() -> CustomerId {
    CustomerId::parse("bank").unwrap_or_else(|_| unreachable_id())
}

/// Settlement accounts of the demo billers (RUB).
pub const SETTLEMENT_ACCOUNTS: [(&str, &str); 3] = [
    ("settle-mobile", "Mobile operators"),
    ("settle-utility", "Utility billers"),
    ("settle-tax", "Federal Treasury"),
];

/// The bank's internal accounts: fee income and FX position per currency, settlement with
/// billers. No floor: the bank's own accounts may go negative.
pub fn bank() -> (AbsCustomer, Vec<AbsProduct>) {
    let id = bank_id();
    let customer = AbsCustomer {
        id: id.clone(),
        phone: "+70000000000".into(),
        name: "Arbat Bank".into(),
        language: "en".into(),
    };
    let internal = |account: String, title: &str, currency: &str| AbsProduct {
        id: account,
        customer_id: id.clone(),
        kind: "internal".into(),
        title: title.into(),
        status: "active".into(),
        currency: currency.into(),
        balance_minor: 0,
        details: json!({}),
    };
    let mut products = vec![];
    for currency in ["RUB", "USD", "EUR"] {
        products.push(internal(
            format!("income-{currency}"),
            "Fee income",
            currency,
        ));
        products.push(internal(
            format!("pos-{currency}"),
            "Currency position",
            currency,
        ));
    }
    for (account, title) in SETTLEMENT_ACCOUNTS {
        products.push(internal(account.into(), title, "RUB"));
    }
    (customer, products)
}

/// Customer `n` with its products.
pub fn customer(n: u32) -> (AbsCustomer, Vec<AbsProduct>) {
    let id = customer_id(n);
    let customer = AbsCustomer {
        id: id.clone(),
        phone: phone(n),
        name: NAMES[(n as usize) % NAMES.len()].to_owned(),
        language: if n % 2 == 1 { "ru" } else { "en" }.to_owned(),
    };
    let product = |prefix: &str, kind: &str, title: &str, balance_minor: i64, details| AbsProduct {
        id: format!("{prefix}{n:06}"),
        customer_id: id.clone(),
        kind: kind.to_owned(),
        title: title.to_owned(),
        status: "active".to_owned(),
        currency: "RUB".to_owned(),
        balance_minor,
        details,
    };
    let last4 = format!("{:04}", n % 10_000);
    let products = vec![
        product(
            "a",
            "account",
            "Current account",
            15_000_000 + i64::from(n) * 100,
            json!({"number": format!("40817810{n:012}")}),
        ),
        AbsProduct {
            currency: "USD".to_owned(),
            ..product(
                "u",
                "account",
                "Dollar account",
                100_000,
                json!({"number": format!("40817840{n:012}")}),
            )
        },
        product(
            "k",
            "card",
            "Debit card",
            0,
            json!({"pan_masked": format!("220220******{last4}"), "account_id": format!("a{n:06}"), "expires": "12/29"}),
        ),
        product(
            "d",
            "deposit",
            "Savings deposit",
            50_000_000,
            json!({"rate": "12.5", "opened": "2025-12-31", "ends": "2027-12-31"}),
        ),
        product(
            "l",
            "loan",
            "Consumer loan",
            30_000_000,
            json!({"rate": "19.9", "principal": {"amount": "300000.00", "currency": "RUB"}, "term_months": 36, "start_date": "2026-11-15"}),
        ),
    ];
    (customer, products)
}

/// The full card number of demo customer `n` (deterministic, documented in the README):
/// `220220`, five digits of `(n × 7919) mod 100000`, a check-fixing digit, then the last
/// four of the masked PAN (`n mod 10000`), so that the Luhn check holds. The ABS keeps only
/// its keyed hash ([`crate::cards`]).
pub fn pan(n: u32) -> String {
    let head = format!("220220{:05}", (u64::from(n) * 7919) % 100_000);
    let tail = format!("{:04}", n % 10_000);
    (0..10)
        .map(|d| format!("{head}{d}{tail}"))
        .find(|pan| crate::cards::luhn_valid(pan))
        .unwrap_or_default()
}

/// Records the keyed hash of every demo card's full PAN (idempotent).
pub async fn seed_card_pans(store: &dyn kernel::store::Store) -> Result<(), StoreError> {
    let key = crate::cards::pan_key(store).await?;
    let cards: Vec<_> = (1..=ABS_CUSTOMERS)
        .map(|n| {
            (
                format!("k{n:06}"),
                customer_id(n),
                crate::cards::pan_hash(&key, &pan(n)),
            )
        })
        .collect();
    store.abs_set_card_pans(&cards).await
}

/// Seeds every demo customer unless present; returns how many were new.
pub async fn seed(store: &dyn AbsStore) -> Result<u32, StoreError> {
    let (bank, accounts) = bank();
    store.abs_seed(&bank, &accounts).await?;
    let mut inserted = 0;
    for n in 1..=ABS_CUSTOMERS {
        let (customer, products) = customer(n);
        if store.abs_seed(&customer, &products).await? {
            inserted += 1;
        }
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_ids_and_phones() {
        assert_eq!(customer_id(1).as_str(), "c000001");
        assert_eq!(phone(1), "+79990000001");
        assert_eq!(phone(200), "+79990000200");
        assert_eq!(owner_of_product("a000042"), Some(customer_id(42)));
        assert_eq!(owner_of_product("a42"), None);
        let (_, products) = customer(7);
        assert!(
            products
                .iter()
                .any(|p| p.details["pan_masked"] == "220220******0007")
        );
        for n in [1, 7, 101, 200] {
            let pan = pan(n);
            assert_eq!(pan.len(), 16);
            assert!(crate::cards::luhn_valid(&pan), "{pan}");
            assert!(pan.starts_with("220220") && pan.ends_with(&format!("{:04}", n % 10_000)));
        }
        assert_ne!(pan(1), pan(2));
        // Documented in the README.
        assert_eq!(pan(101), "2202209981910101");
    }
}
