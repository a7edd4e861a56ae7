namespace Microsoft.ML.Lora.Models;

/// <summary>How token states are reduced to one vector per sequence.</summary>
public enum PoolingMode
{
    /// <summary>The state of the first token ([CLS]).</summary>
    Cls,

    /// <summary>The mean of the token states where the attention mask is 1 (sentence-transformers' mean pooling).</summary>
    Mean,
}
