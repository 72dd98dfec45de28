//! Avro decimals as text: two's-complement big-endian bytes with a scale, both ways.

/// `"-12.5"` with scale 2 → the two's-complement big-endian bytes of -1250, checked
/// against the precision.
pub(super) fn decimal_to_bytes(
    text: &str,
    precision: usize,
    scale: usize,
) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
    {
        return Err("not a decimal number".into());
    }
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > scale {
        return Err(format!("more than {scale} decimal places"));
    }
    let unscaled: String = whole
        .chars()
        .chain(fraction.chars())
        .chain(std::iter::repeat_n('0', scale - fraction.len()))
        .collect();
    let unscaled = unscaled.trim_start_matches('0');
    if unscaled.len() > precision {
        return Err(format!("more than {precision} significant digits"));
    }
    // Big-endian magnitude, then two's complement.
    let mut magnitude: Vec<u8> = vec![0];
    for d in unscaled.bytes().map(|b| b - b'0') {
        let mut carry = u16::from(d);
        for byte in magnitude.iter_mut().rev() {
            let v = u16::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if carry > 0 {
            magnitude.insert(0, carry as u8);
        }
    }
    // Room for the sign bit.
    if magnitude[0] & 0x80 != 0 {
        magnitude.insert(0, 0);
    }
    if negative && unscaled.chars().any(|c| c != '0') {
        let mut carry = true;
        for byte in magnitude.iter_mut().rev() {
            let (v, c) = (!*byte).overflowing_add(u8::from(carry));
            *byte = v;
            carry = c;
        }
    }
    while magnitude.len() > 1
        && ((magnitude[0] == 0 && magnitude[1] & 0x80 == 0)
            || (magnitude[0] == 0xff && magnitude[1] & 0x80 != 0))
    {
        magnitude.remove(0);
    }
    Ok(magnitude)
}

/// Two's-complement big-endian bytes with `scale` → `"-12.50"`.
pub(super) fn decimal_to_string(bytes: &[u8], scale: usize) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude = bytes.to_vec();
    if negative {
        let mut carry = true;
        for byte in magnitude.iter_mut().rev() {
            let (v, c) = (!*byte).overflowing_add(u8::from(carry));
            *byte = v;
            carry = c;
        }
    }
    // Repeated division by ten of the big-endian magnitude.
    let mut digits = Vec::new();
    while magnitude.iter().any(|b| *b != 0) {
        let mut remainder = 0u16;
        for byte in magnitude.iter_mut() {
            let v = (remainder << 8) | u16::from(*byte);
            *byte = (v / 10) as u8;
            remainder = v % 10;
        }
        digits.push(b'0' + remainder as u8);
    }
    while digits.len() <= scale {
        digits.push(b'0');
    }
    digits.reverse();
    let digits = String::from_utf8(digits).expect("ASCII digits");
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    let sign = if negative { "-" } else { "" };
    if scale == 0 {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_convert_both_ways() {
        for (text, scale, bytes) in [
            ("0", 0, vec![0x00]),
            ("1", 0, vec![0x01]),
            ("-1", 0, vec![0xff]),
            ("127", 0, vec![0x7f]),
            ("128", 0, vec![0x00, 0x80]),
            ("-128", 0, vec![0x80]),
            ("-129", 0, vec![0xff, 0x7f]),
            ("12.34", 2, vec![0x04, 0xd2]),
            ("-12.34", 2, vec![0xfb, 0x2e]),
        ] {
            assert_eq!(decimal_to_bytes(text, 38, scale).unwrap(), bytes, "{text}");
            assert_eq!(decimal_to_string(&bytes, scale), text, "{text}");
        }
        assert_eq!(decimal_to_string(&[0x05], 2), "0.05");
        assert!(decimal_to_bytes("1e5", 10, 0).is_err());
        assert!(
            decimal_to_bytes("123", 2, 0)
                .unwrap_err()
                .contains("significant digits")
        );
    }
}
