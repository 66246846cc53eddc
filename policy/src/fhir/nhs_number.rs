//! NHS numbers: ten digits whose last is a Modulus 11 check digit.

/// The identifier system for NHS numbers.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// True if `value` is ten ASCII digits with a correct Modulus 11 check digit.
pub fn is_valid_nhs_number(value: &str) -> bool {
    let digits: Vec<u32> = value.chars().filter_map(|c| c.to_digit(10)).collect();
    if value.len() != 10 || digits.len() != 10 {
        return false;
    }
    let weighted: u32 = digits[..9]
        .iter()
        .zip((2..=10).rev())
        .map(|(digit, weight)| digit * weight)
        .sum();
    match 11 - weighted % 11 {
        11 => digits[9] == 0,
        10 => false,
        check => digits[9] == check,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_known_good_numbers() {
        for good in ["9434765919", "9999999999", "4010232137", "9000000009"] {
            assert!(is_valid_nhs_number(good), "{good}");
        }
    }

    #[test]
    fn rejects_bad_check_digit_length_and_non_digits() {
        for bad in [
            "9434765918",
            "943476591",
            "94347659190",
            "94347659a9",
            "",
            "943 476 59",
        ] {
            assert!(!is_valid_nhs_number(bad), "{bad}");
        }
    }

    #[test]
    fn rejects_numbers_whose_check_would_be_ten() {
        // 123456789 weighs to a check value of 10, which no valid number has.
        assert!((0..=9).all(|d| !is_valid_nhs_number(&format!("123456789{d}"))));
    }
}
