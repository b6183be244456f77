"""Pure measures of estimators and images: bounds, the likelihood and its fits, metrics, uncertainty,
restoration, out-of-distribution flags. Workflows over datasets and runs build on these
(:mod:`galparam.baseline`, :mod:`galparam.report`)."""
