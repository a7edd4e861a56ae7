using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Onnx;
using Microsoft.ML.Lora.Onnx.Internal;
using Microsoft.ML.Runtime;

[assembly: LoadableClass(typeof(LoraOnnxTransformer), typeof(LoraOnnxModelFile), null, typeof(SignatureLoadModel),
    "LoRA text model exported to ONNX", LoraOnnxModelFile.LoaderSignature)]

namespace Microsoft.ML.Lora.Onnx.Internal;

/// <summary>
/// Saves and loads <see cref="LoraOnnxTransformer"/> in ML.NET model files (through ML.NET's internal model-file API, as
/// Microsoft.ML.Lora's LoraModelFile does). The transformer's zip entry holds, via <c>ctx.Writer</c>, a payload version
/// and the batch size; the binary stream <see cref="ModelStreamName"/> holds the whole ONNX model, so a saved pipeline
/// needs no other file.
/// </summary>
internal static class LoraOnnxModelFile
{
    /// <summary>Loader signature recorded in the model file; must stay stable.</summary>
    public const string LoaderSignature = "LoraOnnxTextModel";

    /// <summary>Zip entry (inside the transformer's folder) with the ONNX model.</summary>
    public const string ModelStreamName = "Model.onnx";

    private const string ModelSignature = "LORAONNX";

    // 0x00010001: first format.
    private const uint VersionCurrent = 0x00010001;

    private static VersionInfo GetVersionInfo() => new(
        ModelSignature,
        verWrittenCur: VersionCurrent,
        verReadableCur: VersionCurrent,
        verWeCanReadBack: VersionCurrent,
        loaderAssemblyName: typeof(LoraOnnxModelFile).Assembly.FullName,
        loaderSignature: LoaderSignature);

    public static void Save(LoraOnnxTransformer transformer, ModelSaveContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        ctx.Writer.Write(transformer.InferenceBatchSize);
        ctx.SaveBinaryStream(ModelStreamName, writer => writer.Write(transformer.ModelBytes));
    }

    /// <summary>Called by ML.NET's loader (<c>mlContext.Model.Load</c>) through <see cref="LoadableClassAttribute"/>.</summary>
    public static LoraOnnxTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(ctx);
        ctx.CheckAtModel(GetVersionInfo());
        int batchSize = ctx.Reader.ReadInt32();
        byte[]? model = null;
        if (!ctx.TryLoadBinaryStream(ModelStreamName, reader => model = reader.ReadBytes((int)reader.BaseStream.Length)) || model is null)
        {
            throw new InvalidDataException($"This model file has no '{ModelStreamName}' entry with the ONNX model.");
        }

        return LoraOnnxTransformer.FromBytes(model, "The ONNX model in this model file", batchSize);
    }
}
