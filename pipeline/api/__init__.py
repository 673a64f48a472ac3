"""The HTTP API of `modstream serve`: the synchronous pre-publication check (`/v1/check`),
an HMA-compatible matcher API (`/m`, `/h`, `/c`) mapped onto modstream's banks, API tokens
with scopes, request limits and audit lines.

A serve process is stateless: it follows the bank and incident topics like the match stage
does, answers from memory, and sends what it is given to Kafka (uploads, bank entries), so
any number of them can run behind a load balancer.
"""
