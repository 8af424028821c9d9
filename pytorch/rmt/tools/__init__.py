"""Command-line tools around the library: benchmark, compare, sweep, convert, parity,
generate_data. The library never imports them."""
