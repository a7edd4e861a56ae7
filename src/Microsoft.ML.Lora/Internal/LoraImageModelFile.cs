using System.Globalization;
using Microsoft.ML;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Engine.Images;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

[assembly: LoadableClass(typeof(LoraImageTransformer), typeof(LoraImageModelFile), null, typeof(SignatureLoadModel),
    "LoRA fine-tuned image model", LoraImageModelFile.LoaderSignature)]

namespace Microsoft.ML.Lora.Internal;

/// <summary>
/// Saves and loads <see cref="LoraImageTransformer"/> in ML.NET model files. The transformer's zip entry holds, via
/// <c>ctx.Writer</c>: the task and label key values (as the text model file), the column names and inference batch
/// size, the adapter settings (rank, alpha, dropout, target-module regex, rsLoRA, image size, label mean and scale), the
/// base reference (ONNX model and preprocessing paths, SHA-256) and the SHA-256 of the tensor entry; and the binary
/// stream <see cref="TensorStreamName"/> with the LoRA and head tensors only (<see cref="TensorFile"/>).
/// </summary>
internal static class LoraImageModelFile
{
    /// <summary>Loader signature recorded in the model file; must stay stable.</summary>
    public const string LoaderSignature = "LoraFineTunedImageModel";

    /// <summary>Zip entry (inside the transformer's folder) with the adapter tensors.</summary>
    public const string TensorStreamName = "LoraAdapter.bin";

    private const string ModelSignature = "LORAIMAG";

    private const string FileDescription = "LoRA image model";

    // 0x00010001: first format.
    private const uint VersionCurrent = 0x00010001;

    private static VersionInfo GetVersionInfo() => new(
        ModelSignature,
        verWrittenCur: VersionCurrent,
        verReadableCur: VersionCurrent,
        verWeCanReadBack: VersionCurrent,
        loaderAssemblyName: typeof(LoraImageModelFile).Assembly.FullName,
        loaderSignature: LoaderSignature);

    public static void Save(LoraImageTransformer transformer, ModelSaveContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());
        var w = ctx.Writer;
        var model = transformer.Model;
        var label = model.Label;
        var settings = model.Settings;
        var columns = transformer.Columns;

        ModelFileSections.WriteLabel(w, label);
        w.Write(columns.Text);
        w.Write(columns.Score);
        w.Write(columns.PredictedLabel);
        w.Write(columns.Probability);
        w.Write(transformer.InferenceBatchSize);

        w.Write(settings.Rank);
        w.Write(settings.Alpha);
        w.Write(settings.Dropout);
        w.Write(settings.TargetModules);
        w.Write(settings.UseRsLora);
        w.Write(settings.ImageSize);
        w.Write(settings.LabelMean);
        w.Write(settings.LabelScale);

        w.Write(model.Base.ModelPath);
        w.Write(model.Base.PreprocessPath);
        w.Write(model.BaseWeightsSha256);

        var state = model.AdapterState();
        try
        {
            var (bytes, checksum) = ModelFileSections.EncodeTensors(state);
            w.Write(checksum);
            ctx.SaveBinaryStream(TensorStreamName, writer => writer.Write(bytes));
        }
        finally
        {
            LoraTrainer.DisposeState(state);
        }
    }

    /// <summary>Called by ML.NET's loader (<c>mlContext.Model.Load</c>) through <see cref="LoadableClassAttribute"/>.</summary>
    public static LoraImageTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(ctx);
        ModelFileSections.CheckReadable(ctx, VersionCurrent, FileDescription);
        ctx.CheckAtModel(GetVersionInfo());
        var r = ctx.Reader;
        var label = ModelFileSections.ReadLabel(r, FileDescription);
        var columns = new ColumnNames(r.ReadString(), null, r.ReadString(), r.ReadString(), r.ReadString());
        int inferenceBatchSize = r.ReadInt32();
        var settings = new ImageAdapterSettings(r.ReadInt32(), r.ReadDouble(), r.ReadDouble(), r.ReadString(), r.ReadBoolean(), r.ReadInt32(), r.ReadSingle(), r.ReadSingle());
        var recorded = new ImageBase(r.ReadString(), r.ReadString());
        string sha = r.ReadString();
        string checksum = r.ReadString();

        var state = ModelFileSections.ReadTensors(ctx, TensorStreamName, checksum, FileDescription);
        try
        {
            var device = DeviceResolver.Resolve(env);
            var (lease, found) = ImageBaseResolver.Resolve(recorded, sha, device);
            var model = LoraImageModel.Create(lease, found, device, label, settings, seed: 0, LoraBaseModels.PrivateMergedCopies);
            try
            {
                model.LoadAdapterState(state);
                model.Model.eval();
                return new LoraImageTransformer(model, columns, inferenceBatchSize);
            }
            catch
            {
                model.Dispose();
                throw;
            }
        }
        finally
        {
            LoraTrainer.DisposeState(state);
        }
    }
}
