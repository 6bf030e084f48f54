from collections import OrderedDict
gru4rec_params = OrderedDict([
    ('layers', [512]),
    ('loss', 'bpr-max'),
    ('batch_size', 144),
    ('dropout_p_embed', 0.35),
    ('dropout_p_hidden', 0.0),
    ('learning_rate', 0.05),
    ('momentum', 0.4),
    ('sample_alpha', 0.2),
    ('n_sample', 2048),
    ('embedding', 0),
    ('constrained_embedding', True),
    ('n_epochs', 10),
    ('bpreg', 1.85),
    ('elu_param', 1.0),
    ('logq', 0.0),
])
