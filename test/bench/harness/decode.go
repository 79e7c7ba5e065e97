package harness

import (
	"bytes"
	"errors"
	"unicode/utf16"
	"unicode/utf8"
)

var errBadString = errors.New("malformed JSON string")

// unquoteJSON decodes the JSON string at the start of s, appending its
// value to dst, and returns how many bytes of s it took. It scans with
// bytes.IndexByte (vectorized) rather than byte by byte: the console's
// frames are JSON strings inside JSON strings, and this client shares the
// CPU with the servers it measures.
func unquoteJSON(dst, s []byte) ([]byte, int, error) {
	if len(s) == 0 || s[0] != '"' {
		return dst, 0, errBadString
	}
	i, q := 1, -1 // q: the next '"' at or after i (maybe escaped)
	for {
		if q < i {
			k := bytes.IndexByte(s[i:], '"')
			if k < 0 {
				return dst, 0, errBadString
			}
			q = i + k
		}
		b := bytes.IndexByte(s[i:q], '\\')
		if b < 0 {
			return append(dst, s[i:q]...), q + 1, nil
		}
		b += i
		dst = append(dst, s[i:b]...)
		if b+1 >= len(s) {
			return dst, 0, errBadString
		}
		c := s[b+1]
		i = b + 2
		switch c {
		case '"', '\\', '/':
			dst = append(dst, c)
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'u':
			r, ok := hex4(s, i)
			if !ok {
				return dst, 0, errBadString
			}
			i += 4
			if utf16.IsSurrogate(r) {
				if lo, ok := hex4(s, i+2); ok && i+1 < len(s) && s[i] == '\\' && s[i+1] == 'u' {
					if dec := utf16.DecodeRune(r, lo); dec != utf8.RuneError {
						r = dec
						i += 6
					} else {
						r = utf8.RuneError
					}
				} else {
					r = utf8.RuneError
				}
			}
			dst = utf8.AppendRune(dst, r)
		default:
			return dst, 0, errBadString
		}
	}
}

func hex4(s []byte, at int) (rune, bool) {
	if at+4 > len(s) {
		return 0, false
	}
	var r rune
	for _, c := range s[at : at+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
