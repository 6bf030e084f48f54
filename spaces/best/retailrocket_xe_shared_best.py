from collections import OrderedDict
gru4rec_params = OrderedDict([
    ('layers', [192]),
    ('loss', 'cross-entropy'),
    ('batch_size', 240),
    ('dropout_p_embed', 0.5),
    ('dropout_p_hidden', 0.05),
    ('learning_rate', 0.085),
    ('momentum', 0.3),
    ('sample_alpha', 0.3),
    ('n_sample', 2048),
    ('embedding', 0),
    ('constrained_embedding', True),
    ('n_epochs', 10),
    ('bpreg', 0.0),
    ('elu_param', 0.0),
    ('logq', 1.0),
])
