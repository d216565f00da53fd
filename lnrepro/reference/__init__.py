"""Published figures shipped with lnrepro (CSV package data); `lnrepro.reporting.reference` reads them by name."""
