"""Edge tier (ACME Part II and the edge half of Part III): header search, device similarity, importance mixing.

``nas`` searches a header for a sub-backbone (ENAS on the patch-token grid), ``similarity`` compares devices' feature
distributions (EMD or JS), ``mixing`` turns similarities and importance vectors into each device's personalised mix.
"""
