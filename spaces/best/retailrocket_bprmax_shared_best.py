from collections import OrderedDict
gru4rec_params = OrderedDict([
    ('layers', [224]),
    ('loss', 'bpr-max'),
    ('batch_size', 80),
    ('dropout_p_embed', 0.5),
    ('dropout_p_hidden', 0.05),
    ('learning_rate', 0.05),
    ('momentum', 0.4),
    ('sample_alpha', 0.4),
    ('n_sample', 2048),
    ('embedding', 0),
    ('constrained_embedding', True),
    ('n_epochs', 10),
    ('bpreg', 1.95),
    ('elu_param', 0.5),
    ('logq', 0.0),
])
