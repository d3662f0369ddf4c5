"""Do independently trained copies learn the same filters? Features, similarity, matching, OIPs, report."""
