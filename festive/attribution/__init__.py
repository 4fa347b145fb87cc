"""Attribution: the reference index, exact search over it and the per-family verdict.

Every model version plugs in here by turning lifted functions into vectors; nothing in
this package imports a model. Data flows one way: vectors -> search -> verdict.
"""
